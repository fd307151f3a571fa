"""Harvest throughput against a bare forward pass of the same autoencoder on the same images,
side by side in one run (goal: at least 0.9x), and the peak memory of harvests of growing size
(bounded by the shard size, not by the store size). Prints a table, writes JSON.

    python benchmarks/harvest_throughput.py --out benchmarks/results/harvest_throughput.json

The harvest does everything `visinterp run` does per batch: the forward pass with hooks, the
maps cut into windows, shards written to disk with their SHA-256 and the manifest updated.
The bare pass is `encode` under no_grad, the hooks' maps discarded. Memory is measured in a
fresh subprocess per harvest size (peak resident set size)."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ctxsae_common.files import write_json_atomic
from visinterp.models.autoencoders import load_autoencoder
from visinterp.harvest.maps import harvest
import harvest_bench  # benchmarks/harvest_bench.py
from machine import machine_info  # benchmarks/machine.py: run as python benchmarks/<name>.py

ROOT = Path(__file__).resolve().parents[1]
TAEF2 = ROOT.parent / "shared" / "weights" / "taef2"


def smooth_images(a: int, b: int, size: int) -> torch.Tensor:
    """Deterministic smooth colour images a..b-1 (noise upsampled from 1/8 resolution)."""
    g = torch.Generator().manual_seed(a)
    low = torch.rand(b - a, 3, size // 8, size // 8, generator=g)
    return F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)


def autoencoder(name: str):
    if name == "taef2":
        return load_autoencoder(str(TAEF2))
    from diffusers import AutoencoderKL

    from visinterp.models.autoencoders.adapters import DiffusersKL

    torch.manual_seed(0)  # the SD VAE's architecture (sd-vae-ft-mse config); weights do not change the cost
    return DiffusersKL(AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                                     up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4),
                       "AutoencoderKL, SD VAE architecture (random weights)")


def bare(ae, n: int, size: int, batch: int) -> float:
    """Seconds for encode() over the images, nothing kept."""
    start = time.perf_counter()
    with torch.no_grad():
        for a in range(0, n, batch):
            ae.encode(smooth_images(a, min(a + batch, n), size))
    return time.perf_counter() - start


def harvested(ae, n: int, size: int, batch: int, hooks: list[str], shard_windows: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        harvest(ae, lambda a, b: smooth_images(a, b, size), n, hooks, Path(tmp), {"bench": True},
                batch_images=batch, shard_windows=shard_windows, progress=False)
        return time.perf_counter() - start


def memory_child(n: int, size: int, hook: str, shard_windows: int) -> None:
    """Run in a subprocess: harvest n images, print peak RSS and store size as JSON."""
    ae = autoencoder("taef2")
    with tempfile.TemporaryDirectory() as tmp:
        harvest(ae, lambda a, b: smooth_images(a, b, size), n, [hook], Path(tmp), {}, batch_images=16,
                shard_windows=shard_windows, progress=False)
        harvest_bench.child_report(Path(tmp))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=128, help="images per throughput measurement (default: 128)")
    p.add_argument("--size", type=int, default=128, help="image side in pixels (default: 128)")
    p.add_argument("--batch", type=int, default=16, help="images per forward pass (default: 16)")
    p.add_argument("--repeats", type=int, default=3, help="alternating repeats; medians are reported (default: 3)")
    p.add_argument("--memory-sizes", default="256,1024,4096", help="images per memory measurement")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/harvest_throughput.json"))
    p.add_argument("--memory-child", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.memory_child:
        n, size, hook, shard = args.memory_child
        memory_child(int(n), int(size), hook, int(shard))
        return 0
    hooks = ["latent", "encoder.mid"]
    rows = {}
    for name in ("taef2", "sd-vae-architecture"):
        ae = autoencoder(name)
        n = args.images if name == "taef2" else max(args.batch, args.images // 8)  # the SD VAE is ~40x slower
        bare(ae, args.batch, args.size, args.batch)  # warm-up
        rows[name] = {"autoencoder": ae.description, **harvest_bench.side_by_side(
            lambda: bare(ae, n, args.size, args.batch),
            lambda: harvested(ae, n, args.size, args.batch, hooks, 2048), args.repeats, n, "images")}
    memory = harvest_bench.measure(__file__, [int(v) for v in args.memory_sizes.split(",")],
                                 lambda n: [n, args.size, "encoder.down.2", 256])
    print(f"harvest throughput ({args.size} px, hooks {', '.join(hooks)}, batch {args.batch}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats})")
    print(f"{'autoencoder':<22}{'images':>7}{'bare img/s':>12}{'harvest img/s':>15}{'ratio':>7}")
    for name, r in rows.items():
        print(f"{name:<22}{r['images']:>7}{r['bare_images_per_s']:>12.2f}{r['harvest_images_per_s']:>15.2f}{r['ratio']:>7.3f}")
    print(f"\npeak memory of a TAEF2 harvest of encoder.down.2 ({args.size} px, 256-window shards, 64 MB each)")
    harvest_bench.print_table(memory, "images")
    write_json_atomic(args.out, {"size": args.size, "batch": args.batch, "hooks": hooks, "repeats": args.repeats,
                                 "throughput": rows, "memory": memory, "machine": machine_info()})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
