"""`scenes`: render procedurally sampled scenes with exact ground truth.

    scenes render --n 16 --size 128 --seed 0 --out runs/scenes
    scenes render --scene my_scene.json --size 256 --out runs/one

Writes images/NNNNN.png, truth/NNNNN.npz (depth, normal, object/kind/material/texture ids,
albedo, lit per light), scenes/NNNNN.json, factors.jsonl (one line per image) and
contact_sheet.png. Bad input exits with code 2 and one line saying what is wrong and the fix."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import NoReturn, Sequence

import torch
from tqdm import tqdm

from scenes.io import contact_sheet, write_jsonl, write_png, write_truth
from scenes.render import factor_table, render
from scenes.sampler import SamplerConfig, sample_scene
from scenes.spec import Scene, SceneError

CONTACT_SHEET_MAX = 16


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="scenes", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    r = sub.add_parser("render", help="render sampled (or given) scenes with ground truth",
                       description="Render scenes with per-pixel ground truth and a factor table.")
    r.add_argument("--out", required=True, type=Path, help="output folder")
    r.add_argument("--n", type=_positive, default=16, help="scenes to sample (default: 16)")
    r.add_argument("--size", type=_positive, default=128, help="image side in pixels (default: 128)")
    r.add_argument("--seed", type=int, default=0, help="scene i uses seed SEED + i (default: 0)")
    r.add_argument("--aa", type=_positive, default=2, help="anti-aliasing: AA x AA samples per pixel (default: 2)")
    r.add_argument("--sampler", type=Path, default=None,
                   help="JSON file of SamplerConfig fields (factor distributions), e.g. "
                        '{"n_objects": [2, 3], "materials": {"matte": 1}}')
    r.add_argument("--scene", type=Path, default=None, help="render this scene JSON instead of sampling (--n ignored)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise SceneError(f"{what} {path} does not exist") from None
    except json.JSONDecodeError as e:
        raise SceneError(f"{what} {path} is not valid JSON: {e}") from None


def _sampler_config(path: Path | None) -> SamplerConfig:
    if path is None:
        return SamplerConfig()
    values = _read_json(path, "sampler config")
    known = {f.name for f in dataclasses.fields(SamplerConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise SceneError(f"sampler config {path}: unknown field(s) {unknown}; known: {sorted(known)}")
    tuples = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return SamplerConfig(**tuples)


def cmd_render(args: argparse.Namespace) -> int:
    if args.scene is not None:
        scenes = [Scene.from_dict(_read_json(args.scene, "scene"))]
    else:
        cfg = _sampler_config(args.sampler)
        scenes = [sample_scene(args.seed + i, cfg) for i in range(args.n)]
    rows, sheet = [], []
    for i, scene in enumerate(tqdm(scenes, desc="rendering", unit="image", disable=args.no_progress)):
        out = render(scene, args.size, aa=args.aa)
        name = f"{i:05d}"
        write_png(args.out / "images" / f"{name}.png", out.rgb.numpy())
        write_truth(args.out / "truth" / f"{name}.npz", out)
        (args.out / "scenes").mkdir(parents=True, exist_ok=True)
        write_jsonl(args.out / "scenes" / f"{name}.json", [scene.to_dict()])
        rows.append({"image": name, "seed": scene.seed, "size": args.size, "objects": factor_table(scene, out),
                     "lights": [dataclasses.asdict(light) for light in scene.lights],
                     "camera": dataclasses.asdict(scene.camera), "background": scene.background.kind})
        if len(sheet) < CONTACT_SHEET_MAX:
            sheet.append(out)
    write_jsonl(args.out / "factors.jsonl", rows)
    contact_sheet(args.out / "contact_sheet.png", sheet)
    print(f"wrote {len(scenes)} render(s) to {args.out} (contact_sheet.png, factors.jsonl)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_grad_enabled(False)
    try:
        return {"render": cmd_render}[args.command](args)
    except SceneError as e:
        print(f"scenes {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
