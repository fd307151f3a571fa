"""A sweep's SAEs trained one after another on every thread, against `--jobs` of them at a time
on their share of the threads (`ctxsae_core.pool`, the path of `visinterp run --jobs N`), side
by side in one run.

The sweep is the converged comparisons' stage: per-position TopK, the gated contextual SAE and
its shuffled control at one budget, on synthetic region windows shaped like TAEF2's `encoder.mid`
tiles (d 64, windows of 64 positions, width 512, k 4, 64 windows a step). Both arms train the same
SAEs from the same data, so they reach the same quality: the table gives each SAE's held-out FVU
in both, which differ only in the rounding of another thread count. Each arm is timed whole, as
a job runs it: workers started, SAEs trained, then each read back from its folder and evaluated.

    python benchmarks/sweep_jobs.py --out benchmarks/results/sweep_jobs.json   # about 10 min on 2 cores
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from ctxsae_common.files import write_json_atomic
from ctxsae_common.threads import available_cores
from ctxsae_core.axes import make_axis
from ctxsae_core.evaluate import evaluate
from ctxsae_core.pool import train_sweep
from ctxsae_core.sweep import SweepConfig, sweep_specs
from ctxsae_core.synthetic import RegionsData, RegionsSpec
from machine import machine_info  # benchmarks/machine.py: run as python benchmarks/<name>.py

SPEC = RegionsSpec(d=64, n_groups=8, values_per_group=8, n_local=256, local_per_position=4)
T, WIDTH, K, BATCH_WINDOWS, HELD_OUT_WINDOWS = 64, 512, 4, 64, 128


def sweep_arm(root: Path, tokens: int, jobs: int, cores: int) -> dict:
    """One arm on `cores` threads: the sweep trained `jobs` at a time on an equal share of them
    each (jobs 1: in turn, in this process, on all of them), every SAE then read back and
    evaluated (on all of them); its wall-clock seconds and each SAE's held-out FVU and L0."""
    sweep = SweepConfig(width=WIDTH, k=(K,), k_contextual=(K,), tokens=tokens, batch_windows=BATCH_WINDOWS)
    data = RegionsData(SPEC, T, seed=0, batch_windows=BATCH_WINDOWS)
    held, axis = data.windows(HELD_OUT_WINDOWS, seed=1).x, make_axis("tokens", T)
    threads = max(1, cores // jobs)
    before = torch.get_num_threads()
    torch.set_num_threads(cores)
    try:
        start = time.perf_counter()
        saes = {}
        for spec, trained in train_sweep(sweep_specs(sweep, SPEC.d), sweep, data, axis, root, held, "cpu", jobs,
                                         progress=False, threads=threads):
            scores = evaluate(trained.model, held, axis, shuffle_context=spec.shuffle, seed=sweep.seed)
            saes[spec.name] = {"fvu": scores["fvu"], "l0": scores["l0"],
                               "converged": trained.trainer.summary(scores)["converged"]}
        seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(before)
    return {"jobs": jobs, "threads_each": threads, "seconds": seconds, "saes": saes}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/sweep_jobs.json"))
    p.add_argument("--tokens", type=int, default=1_000_000, help="positions per SAE (default %(default)s)")
    p.add_argument("--cores", type=int, default=None, help="threads in all (default: the cores this process may use)")
    args = p.parse_args(argv)
    cores = args.cores or available_cores()
    if cores < 2:
        p.error(f"{cores} core(s): --jobs needs at least 2 to run SAEs side by side")
    jobs = min(cores, 3)  # the sweep has three SAEs
    arms = {}
    with tempfile.TemporaryDirectory() as tmp:
        arms["in turn"] = sweep_arm(Path(tmp) / "turn", args.tokens, 1, cores)
        arms[f"{jobs} at a time"] = sweep_arm(Path(tmp) / "pool", args.tokens, jobs, cores)
    turn, pool = arms.values()
    result = {"setup": {"d": SPEC.d, "T": T, "width": WIDTH, "k": K, "batch_windows": BATCH_WINDOWS,
                        "tokens_per_sae": args.tokens, "cores": cores},
              "arms": arms, "speedup": turn["seconds"] / pool["seconds"], "machine": machine_info()}
    print(f"{'arm':<14}{'jobs':>5}{'threads':>9}{'seconds':>10}  held-out FVU by SAE")
    for name, arm in arms.items():
        fvus = ", ".join(f"{n} {m['fvu']:.4f}" for n, m in arm["saes"].items())
        print(f"{name:<14}{arm['jobs']:>5}{arm['threads_each']:>9}{arm['seconds']:>10.1f}  {fvus}")
    print(f"speed-up: {result['speedup']:.2f}x")
    write_json_atomic(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
