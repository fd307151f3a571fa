"""How the synthetic benchmark's contextual SAE converges with its budget: the headline point of
`synthetic_regions.py` (gated carry, k 6, the CLI's defaults) trained for 3M, 6M and 12M
positions, each with its held-out learning curve.

The convergence rule (held-out FVU improved by less than 2% over the last quarter of the
tokens) judges one run. Under the default schedule the learning rate decays to zero over the
last 20% of the steps, so a run whose FVU has levelled off at its full rate still drops inside
the last quarter, by what the decay takes out of the rate's noise. This benchmark separates the
two: per budget it reports the final FVU, the rule's last-quarter gain, the FVU where the decay
starts and the share of the last quarter's gain that came after that point, and for each
doubling of the budget the final FVU it gained.

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
from ctxsae_core.trainer import convergence, curve_at
from synthetic_regions import Family, Setup, setup_record, train_one
from machine import machine_info  # benchmarks/machine.py: run as python benchmarks/<name>.py

BUDGETS = (3_000_000, 6_000_000, 12_000_000)
QUICK_BUDGETS = (20_000, 40_000)
K = 6  # synthetic_regions.py's contextual point nearest its target FVU


def budget_row(point: dict, decay_fraction: float) -> dict:
    """One budget's figures: its final FVU and convergence, the FVU where the decay starts, and
    the share of the last quarter's gain made after that point (by the decay)."""
    tokens, curve = point["tokens"], point["curve"]
    judged = convergence(curve, tokens, decay_fraction)
    return {"tokens": tokens, "fvu": point["fvu"], "l0": point["l0"], "state_l0": point["state_l0"],
            "converged": point["converged"], "fvu_gain_last_quarter": point["fvu_gain_last_quarter"],
            "fvu_at_decay_start": curve_at(curve, (1 - decay_fraction) * tokens),
            "decay_share_of_last_quarter_gain": judged["decay_share_of_last_quarter_gain"],
            "train_seconds": point["train_seconds"], "curve": curve}


def summarise(points: list[dict], decay_fraction: float) -> dict:
    rows = [budget_row(p, decay_fraction) for p in sorted(points, key=lambda p: p["tokens"])]
    doublings = [{"from": a["tokens"], "to": b["tokens"], "fvu_gain": (a["fvu"] - b["fvu"]) / a["fvu"]}
                 for a, b in zip(rows, rows[1:])]
    return {"budgets": rows, "doublings": doublings}


def print_table(summary: dict) -> None:
    print(f"\n{'tokens':>12}{'FVU':>9}{'last-quarter gain':>19}{'converged':>11}{'FVU at decay start':>20}"
          f"{'decay share':>13}{'state L0':>10}")
    for r in summary["budgets"]:
        share = r["decay_share_of_last_quarter_gain"]
        print(f"{r['tokens']:>12,}{r['fvu']:>9.4f}{r['fvu_gain_last_quarter']:>19.1%}{str(r['converged']):>11}"
              f"{r['fvu_at_decay_start']:>20.4f}{'-' if share is None else f'{share:.0%}':>13}{r['state_l0']:>10.1f}")
    for d in summary["doublings"]:
        print(f"{d['from']:,} -> {d['to']:,} positions: final FVU gained {d['fvu_gain']:.1%}")


def plot(summary: dict, decay_fraction: float, path: Path) -> None:
    from scenes.figures import pyplot, save_figure

    fig, ax = pyplot().subplots(figsize=(8, 4.2))
    for i, r in enumerate(summary["budgets"]):
        xs = [p["tokens"] / 1e6 for p in r["curve"]]
        ax.plot(xs, [p["fvu"] for p in r["curve"]], color=f"C{i}", marker=".", label=f"{r['tokens'] / 1e6:g}M positions")
        start = (1 - decay_fraction) * r["tokens"] / 1e6
        ax.axvline(start, color=f"C{i}", lw=0.8, ls=":")
    ax.set_xlabel("training positions (millions); dotted: where the learning rate starts to decay")
    ax.set_ylabel("held-out FVU")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
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
    print_table(summary)
    print(f"\nwrote {args.out} and its plot in {summary['wall_seconds'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
