"""`scenes`: render procedurally sampled scenes with exact ground truth.

    scenes render --n 16 --size 128 --seed 0 --out runs/scenes
    scenes render --scene my_scene.json --size 256 --out runs/one
    scenes coord-fit --scene-seed 3 --kind image --out runs/fit_image
    scenes coord-fit --scene-seed 3 --kind radiance --max-minutes 10 --out runs/fit_radiance

Writes images/NNNNN.png, truth/NNNNN.npz (depth, normal, object/kind/material/texture ids,
albedo, lit per light), scenes/NNNNN.json, factors.jsonl (one line per image) and
contact_sheet.png. `coord-fit` fits a coordinate MLP to a scene and writes fit.json + model.safetensors, metrics.json (PSNR
and point-wise errors against the scene's exact truth), history.jsonl and figures. Bad input exits with code 2 and one line saying what is wrong and the fix."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from ctxsae_common import typed
from ctxsae_common.cli import OneLineParser, run_command
from ctxsae_common.cli import positive_int as _positive
from ctxsae_common.device import add_device_flags, resolve_device
from ctxsae_common.files import read_json_object, write_json_atomic, write_jsonl_atomic
from scenes.coord_fit import RADIANCE_SAMPLER, FitConfig, fit_image, fit_radiance
from scenes.coord_mlp import COORD_KINDS
from scenes.figures import curve_figure, fit_figure
from scenes.io import contact_sheet, save_fit, write_png, write_truth
from scenes.render import factor_table, render
from scenes.sampler import SamplerConfig, sample_scene
from scenes.spec import Scene

CONTACT_SHEET_MAX = 16


def build_parser() -> argparse.ArgumentParser:
    """The `scenes` command line: `render` and `coord-fit`."""
    parser = OneLineParser(prog="scenes", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
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
    add_device_flags(r)
    r.add_argument("--no-progress", action="store_true", help="no progress bar")

    f = sub.add_parser("coord-fit", help="fit a coordinate MLP (image or radiance field) and check it",
                       description="Fit a coordinate MLP to one scene and check it against the scene's exact "
                                   "ground truth: held-out pixels or views, and point-wise errors by object, "
                                   "material and texture.")
    f.add_argument("--out", required=True, type=Path, help="output folder: metrics.json, history.jsonl, figures")
    f.add_argument("--kind", choices=("image", "radiance"), default="image",
                   help="'image': colour at 2D coordinates; 'radiance': density + colour in 3D (default: image)")
    f.add_argument("--scene-seed", type=int, default=0, help="seed of the sampled scene (default: 0)")
    f.add_argument("--scene", type=Path, default=None, help="fit this scene JSON instead of sampling one")
    f.add_argument("--sampler", type=Path, default=None,
                   help="JSON file of SamplerConfig fields (default for radiance: 3 objects, no ground plane)")
    f.add_argument("--mlp", choices=COORD_KINDS, default="fourier",
                   help="'fourier' (ReLU MLP on a positional encoding) or 'siren' (default: fourier)")
    for name, help_text in [("size", "image side in pixels"), ("steps", "optimiser steps"),
                            ("hidden", "hidden width"), ("layers", "hidden layers"), ("batch", "pixels per step "
                            "(radiance: rays = batch / 4)"), ("views", "radiance: training views"),
                            ("samples", "radiance: samples per ray")]:
        f.add_argument(f"--{name}", type=_positive, default=getattr(FitConfig, name),
                       help=f"{help_text} (default: {getattr(FitConfig, name)})")
    f.add_argument("--lr", type=float, default=None, help="learning rate (default: 5e-3 fourier, 1e-4 siren)")
    f.add_argument("--max-minutes", type=float, default=None, help="stop after this much training time")
    f.add_argument("--seed", type=int, default=0, help="seed of the initialisation and batches (default: 0)")
    add_device_flags(f)
    f.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _sampler_config(path: Path | None) -> SamplerConfig:
    if path is None:
        return SamplerConfig()
    return typed.from_dict(SamplerConfig, read_json_object(path, "sampler config"), f"sampler config {path}")


def cmd_render(args: argparse.Namespace) -> int:
    """`scenes render`: render sampled (or given) scenes with their truth into --out."""
    device = resolve_device(args.device)
    if args.scene is not None:
        scenes = [Scene.from_dict(read_json_object(args.scene, "scene"))]
    else:
        cfg = _sampler_config(args.sampler)
        scenes = [sample_scene(args.seed + i, cfg) for i in range(args.n)]
    rows, sheet = [], []
    for i, scene in enumerate(tqdm(scenes, desc=f"rendering ({device})", unit="image", disable=args.no_progress)):
        out = render(scene, args.size, aa=args.aa, device=device)
        name = f"{i:05d}"
        write_png(args.out / "images" / f"{name}.png", out.rgb.numpy())
        write_truth(args.out / "truth" / f"{name}.npz", out)
        write_json_atomic(args.out / "scenes" / f"{name}.json", scene.to_dict())
        rows.append({"image": name, "seed": scene.seed, "size": args.size, "objects": factor_table(scene, out),
                     "lights": [dataclasses.asdict(light) for light in scene.lights],
                     "camera": dataclasses.asdict(scene.camera), "background": scene.background.kind})
        if len(sheet) < CONTACT_SHEET_MAX:
            sheet.append(out)
    write_jsonl_atomic(args.out / "factors.jsonl", rows)
    contact_sheet(args.out / "contact_sheet.png", sheet)
    print(f"wrote {len(scenes)} render(s) to {args.out} (contact_sheet.png, factors.jsonl)")
    return 0


def cmd_coord_fit(args: argparse.Namespace) -> int:
    """`scenes coord-fit`: fit a coordinate MLP to one scene and check it against the truth."""
    device = resolve_device(args.device)
    if args.scene is not None:
        scene = Scene.from_dict(read_json_object(args.scene, "scene"))
    else:
        cfg = _sampler_config(args.sampler) if args.sampler else (
            RADIANCE_SAMPLER if args.kind == "radiance" else SamplerConfig())
        scene = sample_scene(args.scene_seed, cfg)
    fit_cfg = FitConfig(kind=args.mlp, size=args.size, hidden=args.hidden, layers=args.layers, steps=args.steps,
                        max_minutes=args.max_minutes, lr=args.lr, batch=args.batch, views=args.views,
                        samples=args.samples, seed=args.seed, progress=not args.no_progress,
                        device=str(device))
    result = (fit_image if args.kind == "image" else fit_radiance)(scene, fit_cfg)
    args.out.mkdir(parents=True, exist_ok=True)
    save_fit(args.out, args.kind, scene, fit_cfg, result.model)
    write_json_atomic(args.out / "metrics.json", {"scene_seed": scene.seed, **result.metrics})
    write_jsonl_atomic(args.out / "history.jsonl", result.history)
    key = "heldout_psnr" if args.kind == "image" else "heldout_view0_psnr"
    fit_figure(result.images, args.out / "fit_vs_truth.png",
               f"{args.kind} fit ({args.mlp}), held-out PSNR {result.metrics['heldout_psnr']:.2f} dB")
    curve_figure(result.history, key, args.out / "learning_curve.png", f"{args.kind} fit ({args.mlp})")
    m = result.metrics
    print(f"held-out PSNR {m['heldout_psnr']:.2f} dB after {m['steps']} steps ({m['train_seconds']:.0f} s); "
          f"wrote {args.out}/metrics.json, fit_vs_truth.png, learning_curve.png")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run `scenes` with `argv`; returns the exit code (2 for bad input, with one line on stderr)."""
    return run_command(build_parser(), {"render": cmd_render, "coord-fit": cmd_coord_fit}, argv)


if __name__ == "__main__":
    sys.exit(main())
