"""Render throughput of `scenes`: images/s at 64, 128 and 256 px (2x2 anti-aliasing), and how
time grows with resolution and with the number of objects. Prints a table, writes JSON.

    python benchmarks/render_throughput.py --out benchmarks/results/render_throughput.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from ctxsae_common.files import write_json_atomic
from scenes.render import render
from scenes.sampler import SamplerConfig, sample_scene
from machine import machine_info  # benchmarks/machine.py: run as python benchmarks/<name>.py


def _time(scenes, size: int, aa: int) -> float:
    """Images per second over `scenes`."""
    start = time.perf_counter()
    for s in scenes:
        render(s, size, aa=aa)
    return len(scenes) / (time.perf_counter() - start)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenes", type=int, default=6, help="scenes per measurement (default: 6)")
    p.add_argument("--aa", type=int, default=2, help="anti-aliasing samples per pixel side (default: 2)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/render_throughput.json"))
    args = p.parse_args(argv)
    scenes = [sample_scene(seed) for seed in range(args.scenes)]
    render(scenes[0], 16)  # warm-up
    by_size = {size: _time(scenes, size, args.aa) for size in (64, 128, 256)}
    by_objects = {}
    for n in (1, 3, 5):
        cfg = SamplerConfig(n_objects=(n, n))
        by_objects[n] = _time([sample_scene(seed, cfg) for seed in range(args.scenes)], 128, args.aa)
    print(f"render throughput ({args.aa}x{args.aa} AA, {torch.get_num_threads()} threads, {args.scenes} sampled scenes each)")
    print(f"{'size':>6}{'images/s':>10}{'ms/image':>10}{'time vs 64 px':>15}{'pixels vs 64 px':>17}")
    for size, ips in by_size.items():
        print(f"{size:>6}{ips:>10.2f}{1000 / ips:>10.0f}{by_size[64] / ips:>14.1f}x{(size / 64) ** 2:>16.0f}x")
    print(f"\n{'objects (+ plane p=0.8)':>24}{'images/s at 128 px':>20}")
    for n, ips in by_objects.items():
        print(f"{n:>24}{ips:>20.2f}")
    write_json_atomic(args.out, {"aa": args.aa, "scenes": args.scenes, "images_per_s_by_size": by_size,
                          "images_per_s_by_objects_128px": by_objects,
                          "machine": machine_info()})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
