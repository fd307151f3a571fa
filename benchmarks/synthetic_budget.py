"""How the synthetic benchmark's contextual SAE converges with its budget: the headline point of
`synthetic_regions.py` (gated carry, k 6, the CLI's defaults) trained for 3M, 6M and 12M
positions, each with its held-out learning curve.

Under the default schedule the learning rate decays to zero over the last 20% of the steps, so
a run that has levelled off at its full rate still gains over the last quarter, where the
convergence rule reads it; per budget, the figures of `benchmarks/budgets.py` separate the two.

    python benchmarks/synthetic_budget.py --out benchmarks/results/synthetic_budget.json   # ~30 min, 2 cores
    python benchmarks/synthetic_budget.py --quick --out /tmp/budget.json                   # plumbing only
    python benchmarks/synthetic_budget.py --lr 3e-3 --out benchmarks/results/synthetic_budget_lr3e-3.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from ctxsae_common.cli import OneLineParser, positive_float
from ctxsae_common.files import write_json_atomic
from ctxsae_core.config import TrainConfig
from synthetic_regions import Family, Setup, setup_record, train_one
from budgets import draw_budgets, print_table, summarise
from machine import machine_info  # benchmarks/machine.py: run as python benchmarks/<name>.py

BUDGETS = (3_000_000, 6_000_000, 12_000_000)
QUICK_BUDGETS = (20_000, 40_000)
K = 6  # synthetic_regions.py's contextual point nearest its target FVU


def plot(summary: dict, decay_fraction: float, path: Path) -> None:
    from scenes.figures import pyplot, save_figure

    fig, ax = pyplot().subplots(figsize=(8, 4.2))
    draw_budgets(ax, summary, decay_fraction)
    ax.set_title(f"Contextual SAE (gated, k {K}) on synthetic regions: learning curves by budget")
    save_figure(fig, path, dpi=120)


def main(argv=None) -> int:
    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/synthetic_budget.json"), help="result JSON (plot beside it)")
    p.add_argument("--quick", action="store_true", help="tiny budgets: checks the plumbing, not convergence")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="parallel trainings, one thread each")
    p.add_argument("--lr", type=positive_float, default=None, help="learning rate (default: TrainConfig's)")
    args = p.parse_args(argv)
    setup, budgets = Setup(), QUICK_BUDGETS if args.quick else BUDGETS
    decay_fraction = TrainConfig().decay_fraction
    start = time.perf_counter()
    print(f"{len(budgets)} trainings of the contextual SAE (gated, k {K}) on {args.workers} worker(s)...", flush=True)
    jobs = [(setup, Family("contextual gated", "contextual", "gated", False, (K,), n, args.lr), K) for n in budgets]
    with ProcessPoolExecutor(args.workers) as pool:  # the longest first, so the shorter ones share the other worker
        points = list(pool.map(train_one, *zip(*sorted(jobs, key=lambda j: -j[1].tokens))))
    diverged = [f"{q['tokens']:,}: {q['diverged']}" for q in points if "diverged" in q]
    if diverged:
        print(f"error: training diverged at {'; '.join(diverged)}", file=sys.stderr)
        return 1
    rate = {"lr": args.lr, "lr_is_default": False} if args.lr else {"lr_is_default": True}
    summary = {"setup": {**setup_record(setup), **rate, "k": K, "carry": "gated", "decay_fraction": decay_fraction},
               **summarise(points, decay_fraction), "quick": args.quick,
               "wall_seconds": time.perf_counter() - start, "machine": machine_info()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, summary)
    plot(summary, decay_fraction, args.out.with_suffix(".png"))
    print()
    print_table(summary)
    print(f"\nwrote {args.out} and its plot in {summary['wall_seconds'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
