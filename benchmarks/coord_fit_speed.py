"""Coordinate-MLP training time on CPU to reach a given PSNR at 64 px, and the point-wise error
to the scene's ground truth reached. Aim: a radiance field of a 3-object scene reaches 25 dB on
held-out views within 10 minutes of CPU. Prints a table, writes JSON.

    python benchmarks/coord_fit_speed.py --out benchmarks/results/coord_fit_speed.json   # ~12 min
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from scenes.coord_fit import RADIANCE_SAMPLER, FitConfig, fit_image, fit_radiance
from ctxsae_common.files import write_json_atomic
from scenes.sampler import sample_scene
from machine import machine_info  # benchmarks/machine.py: run as python benchmarks/<name>.py


def first_reaching(history: list[dict], key: str, target: float) -> float | None:
    """Training seconds at the first evaluation where `key` >= target (None if never)."""
    return next((h["seconds"] for h in history if h[key] >= target), None)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scene-seed", type=int, default=3)
    p.add_argument("--minutes", type=float, default=10.0, help="time budget of the radiance fit")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/coord_fit_speed.json"))
    args = p.parse_args(argv)
    scene = sample_scene(args.scene_seed, RADIANCE_SAMPLER)
    rows = {}
    print("fitting the image (fourier, 64 px)...", flush=True)
    img = fit_image(scene, FitConfig(size=64, steps=1500, eval_every=100, progress=False))
    rows["image fourier"] = {"metrics": img.metrics, "history": img.history,
                             "seconds_to": {str(t): first_reaching(img.history, "heldout_psnr", t) for t in (25, 30)}}
    print("fitting the image (siren, 64 px)...", flush=True)
    sir = fit_image(scene, FitConfig(kind="siren", size=64, steps=1500, eval_every=100, progress=False))
    rows["image siren"] = {"metrics": sir.metrics, "history": sir.history,
                           "seconds_to": {str(t): first_reaching(sir.history, "heldout_psnr", t) for t in (25, 30)}}
    print(f"fitting the radiance field (fourier, 64 px, {args.minutes} min budget)...", flush=True)
    rad = fit_radiance(scene, FitConfig(size=64, steps=100_000, max_minutes=args.minutes, eval_every=200,
                                        progress=False))
    rows["radiance fourier"] = {"metrics": rad.metrics, "history": rad.history,
                                "seconds_to": {str(t): first_reaching(rad.history, "heldout_view0_psnr", t)
                                               for t in (20, 25)}}
    print(f"\ncoordinate-MLP fits, 3-object scene (seed {args.scene_seed}), 64 px, {torch.get_num_threads()} threads")
    print(f"{'fit':<18}{'steps':>7}{'seconds':>9}{'held-out PSNR':>15}   seconds to reach")
    for name, r in rows.items():
        m = r["metrics"]
        reach = ", ".join(f"{t} dB: {'-' if s is None else f'{s:.0f}'}" for t, s in r["seconds_to"].items())
        print(f"{name:<18}{m['steps']:>7}{m['train_seconds']:>9.0f}{m['heldout_psnr']:>15.2f}   {reach}")
    m = rad.metrics
    print(f"radiance field vs the scene: occupancy accuracy {m['occupancy_accuracy']:.3f} (|error| "
          f"{m['occupancy_abs_error']:.3f}), surface colour |error| {m['surface_colour_abs_error']:.3f}, "
          f"depth |error| {m['depth_abs_error']:.3f} world units")
    aim = rows["radiance fourier"]["seconds_to"]["25"]
    print(f"aim (25 dB on held-out views within 10 min): {'MET' if aim is not None and aim <= 600 else 'MISSED'}")
    write_json_atomic(args.out, {"scene_seed": args.scene_seed, "fits": rows,
                          "machine": machine_info()})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
