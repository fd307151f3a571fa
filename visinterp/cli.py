"""`visinterp`: analyses that join model adapters to the SAE core.

    visinterp run [--config configs/quick.toml] [--out runs/visinterp]
    visinterp llm-compare --config configs/llm/quick.toml --out runs/llm_quick
    visinterp scene-features --fit runs/fit_radiance --out runs/scene_features

Bad input exits with code 2 and one line saying what is wrong and the fix."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Sequence

from ctxsae_common.cli import OneLineParser, run_command
from ctxsae_common.device import add_device_flags, resolve_device
from ctxsae_common.typed import field_help
from ctxsae_core.distributed import init_from_env
from scenes.io import load_fit
from visinterp.coords.acts import pixel_windows, ray_windows
from visinterp.coords.config import CoordsConfig
from visinterp.coords.run import analyse


def build_parser() -> argparse.ArgumentParser:
    """The `visinterp` command line: `run`, `llm-compare` and `scene-features`."""
    parser = OneLineParser(prog="visinterp", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    r = sub.add_parser("run", help="the main job: SAEs on an image autoencoder's activations, with a report",
                       description="Render scenes (or read images), encode them with an SD-family autoencoder, "
                                   "harvest hook maps into activation stores, train per-position and contextual SAEs "
                                   "(and the shuffled-context control) over a sparsity sweep, and write metrics.json "
                                   "and report.html. Run it again on the same --out to resume.")
    r.add_argument("--config", type=Path, default=None,
                   help="a TOML file overriding the defaults table by table (see configs/quick.toml)")
    r.add_argument("--out", type=Path, default=Path("runs/visinterp"), help="output folder (default: runs/visinterp)")
    r.add_argument("--autoencoder", default=None,
                   help="override the config's autoencoder: 'offline', a TAESD-family or diffusers folder, or a hub id")
    add_device_flags(r)
    add_jobs_flag(r)
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    c = sub.add_parser("llm-compare", help="per-position vs contextual SAEs on a causal LM, with spliced CE",
                       description="Harvest a causal LM's activations at one hook over region-labelled token windows "
                                   "(resumable), train the sweep with shuffled controls, and write comparison.json: "
                                   "L0, state L0, FVU, spliced CE (clean, spliced, zero-ablated, recovered, delta), "
                                   "localization against the region labels and the goal check at matched FVU; and a "
                                   "self-contained report.html. Run it again on the same --out to resume.")
    c.add_argument("--config", type=Path, required=True, help="a TOML file, e.g. configs/llm/quick.toml")
    c.add_argument("--out", type=Path, required=True, help="output folder")
    add_device_flags(c)
    add_jobs_flag(c)
    c.add_argument("--no-progress", action="store_true", help="no progress bars")
    s = sub.add_parser("scene-features", help="SAEs on a coordinate MLP, aligned with the scene's factors",
                       description="Train per-position and contextual SAEs (and the shuffled-context control) on "
                                   "a fitted coordinate MLP's hidden layer; report factor alignment and unnamed "
                                   "features with pictures.")
    s.add_argument("--fit", required=True, type=Path, help="a folder written by 'scenes coord-fit'")
    s.add_argument("--out", required=True, type=Path, help="output folder: report.json and figures")
    s.add_argument("--layer", type=int, default=-1, help="hidden layer to read (default: -1, the last)")
    s.add_argument("--views", type=int, default=4, help="radiance: camera views whose rays make windows (default: 4)")
    s.add_argument("--size", type=int, default=32, help="pixels per side of each view or image grid (default: 32)")
    s.add_argument("--tile", type=int, default=8, help="image: windows are TILE x TILE pixel squares (default: 8)")
    for f in dataclasses.fields(CoordsConfig):
        s.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default,
                       help=f"{field_help(CoordsConfig, f.name)} (default: {f.default})")
    add_device_flags(s)
    s.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def add_jobs_flag(parser: argparse.ArgumentParser) -> None:
    """Add --jobs (SAEs trained at a time, `ctxsae_core.pool`) to a command's parser."""
    parser.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="train N of the sweep's SAEs at a time, each in a worker process on its share of the "
                             "--threads (default: 1, one after another; the figures are the same either way)")


def cmd_scene_features(args: argparse.Namespace) -> int:
    """`visinterp scene-features`: SAEs on a fitted coordinate MLP, scored against the scene."""
    device = resolve_device(args.device)
    target, scene, fit_cfg, model = load_fit(args.fit)
    if target == "radiance":
        windows = ray_windows(model, scene, fit_cfg, views=args.views, size=args.size, layer=args.layer)
    else:
        windows = pixel_windows(model, scene, args.size, tile=args.tile, layer=args.layer)
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(CoordsConfig)}
    report = analyse(windows, CoordsConfig(**values), args.out, progress=not args.no_progress, device=device)
    print(f"{'model':<38}{'FVU':>7}{'L0':>7}{'state L0':>10}{'best AUROC':>12}{'switch':>8}{'unnamed':>9}")
    for name, m in report["models"].items():
        print(f"{name:<38}{m['fvu']:>7.3f}{m['l0']:>7.2f}{m['state_l0']:>10.2f}{m['mean_best_auroc']:>12.3f}"
              f"{m['within_object_switch_rate']:>8.3f}{m['n_unnamed']:>9}")
    print(f"{'linear probe on the layer (ceiling)':<38}{'':>24}{report['probe']['mean_auroc']:>12.3f}")
    print(f"wrote {args.out / 'report.json'}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """`visinterp run`: the image job, then a summary table."""
    from visinterp.image.config import load_run_config
    from visinterp.image.run import run

    cfg = load_run_config(args.config)
    if args.autoencoder:
        cfg = dataclasses.replace(cfg, autoencoder=args.autoencoder)
    _, device = init_from_env(args.device)  # under torchrun: the harvest is shared among the ranks
    result = run(cfg, args.out, progress=not args.no_progress, device=device, jobs=args.jobs)
    if not result:  # a torchrun rank other than 0: its share of the harvest is done
        return 0
    print(f"autoencoder: {result['autoencoder']['autoencoder']}")
    print(f"{'hook / SAE':<44}{'L0':>7}{'state L0':>10}{'FVU':>8}{'dead':>7}{'PSNR clean':>12}")
    for name, m in result["saes"].items():
        print(f"{name:<44}{m['l0']:>7.2f}{m['state_l0']:>10.2f}{m['fvu']:>8.4f}{m['dead_fraction']:>7.2f}"
              f"{m['psnr_vs_clean_decode']:>12.2f}")
    print(f"wrote {args.out / 'metrics.json'} and {args.out / 'report.html'}")
    return 0


def cmd_llm_compare(args: argparse.Namespace) -> int:
    """`visinterp llm-compare`: the LLM job and its report, then a summary table and the verdict."""
    from visinterp.llm.config import load_llm_config
    from visinterp.analysis.matched_l0 import verdict
    from visinterp.llm.report import ceiling_line, write_report
    from visinterp.llm.run import compare
    from visinterp.llm.view import LLMRunView

    cfg = load_llm_config(args.config)
    _, device = init_from_env(args.device)  # under torchrun: the harvest is shared among the ranks
    result = compare(cfg, args.out, progress=not args.no_progress, device=device, jobs=args.jobs)
    if not result:  # a torchrun rank other than 0: its share of the harvest is done
        return 0
    write_report(LLMRunView(args.out))
    print(f"{result['model']} {result['hook']}: CE clean {result['ce_clean']:.3f}, zero-ablated {result['ce_zero_ablation']:.3f}")
    print(f"{'SAE':<36}{'L0':>7}{'state L0':>10}{'FVU':>8}{'delta CE':>10}{'CE rec.':>9}")
    for name, m in result["saes"].items():
        print(f"{name:<36}{m['l0']:>7.2f}{m['state_l0']:>10.2f}{m['fvu']:>8.3f}{m['delta_ce']:>10.3f}{m['ce_recovered']:>9.3f}")
    print(verdict(result["goals"]))
    b = result["baselines"]
    print(f"null baselines (held-out FVU): unigram {b['unigram']:.3f}, previous token {b['previous_1']:.3f}, "
          f"mean of previous 4 {b['previous_4']:.3f}")
    if ceiling_line(result["saes"]):
        print(ceiling_line(result["saes"]))
    print(f"wrote {args.out / 'comparison.json'} and {args.out / 'report.html'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run `visinterp` with `argv`; returns the exit code (2 for bad input, with one line on stderr)."""
    return run_command(build_parser(), {"run": cmd_run, "llm-compare": cmd_llm_compare,
                                        "scene-features": cmd_scene_features}, argv)


if __name__ == "__main__":
    sys.exit(main())
