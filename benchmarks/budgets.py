"""What the budget benchmarks share (`synthetic_budget.py`, `image_budget.py`): one run's
convergence figures at its budget, the gain of each doubling, a table and the learning curves.

The convergence rule (held-out FVU improved by less than 2% over the last quarter of the
tokens) judges one run. Under the default schedule the learning rate decays to zero over the
last 20% of the steps, so a run whose FVU has levelled off at its full rate still drops inside
the last quarter, by what the decay takes out of the rate's noise. These figures separate the
two: per budget the final FVU, the rule's last-quarter gain, the FVU where the decay starts and
the share of the last quarter's gain that came after that point, and for each doubling of the
budget the final FVU it gained.
"""

from __future__ import annotations

from ctxsae_core.trainer import convergence, curve_at


def budget_row(point: dict, decay_fraction: float) -> dict:
    """One budget's figures from a trained SAE's row (`tokens`, `curve`, `fvu`, `l0`, `state_l0`,
    `converged`, `fvu_gain_last_quarter`, and `train_seconds` where measured): its final FVU and
    convergence, the FVU where the decay starts, and the share of the last quarter's gain made
    after that point (by the decay)."""
    tokens, curve = point["tokens"], point["curve"]
    judged = convergence(curve, tokens, decay_fraction)
    return {"tokens": tokens, "fvu": point["fvu"], "l0": point["l0"], "state_l0": point["state_l0"],
            "converged": point["converged"], "fvu_gain_last_quarter": point["fvu_gain_last_quarter"],
            "fvu_at_decay_start": curve_at(curve, (1 - decay_fraction) * tokens),
            "decay_share_of_last_quarter_gain": judged["decay_share_of_last_quarter_gain"],
            "train_seconds": point.get("train_seconds"), "curve": curve}


def summarise(points: list[dict], decay_fraction: float) -> dict:
    """The budgets' rows, smallest first, and what each doubling (each next budget) gained: in the
    final FVU (`fvu_gain`) and in the learning curve's last point (`curve_end_gain`; the two differ
    for a thresholded SAE, whose final figures are at the L0 its saved threshold gives on the
    held-out windows, and its curve's points at its budget)."""
    rows = [budget_row(p, decay_fraction) for p in sorted(points, key=lambda p: p["tokens"])]
    doublings = [{"from": a["tokens"], "to": b["tokens"], "fvu_gain": (a["fvu"] - b["fvu"]) / a["fvu"],
                  "curve_end_gain": (a["curve"][-1]["fvu"] - b["curve"][-1]["fvu"]) / a["curve"][-1]["fvu"]}
                 for a, b in zip(rows, rows[1:])]
    return {"budgets": rows, "doublings": doublings}


def print_table(summary: dict) -> None:
    print(f"{'tokens':>12}{'FVU':>9}{'last-quarter gain':>19}{'converged':>11}{'FVU at decay start':>20}"
          f"{'decay share':>13}{'state L0':>10}")
    for r in summary["budgets"]:
        share = r["decay_share_of_last_quarter_gain"]
        print(f"{r['tokens']:>12,}{r['fvu']:>9.4f}{r['fvu_gain_last_quarter']:>19.1%}{str(r['converged']):>11}"
              f"{r['fvu_at_decay_start']:>20.4f}{'-' if share is None else f'{share:.0%}':>13}{r['state_l0']:>10.1f}")
    for d in summary["doublings"]:
        print(f"{d['from']:,} -> {d['to']:,} positions: final FVU gained {d['fvu_gain']:.1%}, the curve's last point "
              f"{d['curve_end_gain']:.1%}")


def draw_budgets(ax, summary: dict, decay_fraction: float, positions: str = "positions") -> None:
    """Each budget's learning curve on `ax`, with a dotted line where its rate starts to decay."""
    for i, r in enumerate(summary["budgets"]):
        xs = [p["tokens"] / 1e6 for p in r["curve"]]
        ax.plot(xs, [p["fvu"] for p in r["curve"]], color=f"C{i}", marker=".",
                label=f"{r['tokens'] / 1e6:.3g}M {positions}{'' if r['converged'] else ' (not converged)'}")
        ax.axvline((1 - decay_fraction) * r["tokens"] / 1e6, color=f"C{i}", lw=0.8, ls=":")
    ax.set_xlabel(f"training {positions} (millions); dotted: where the learning rate starts to decay")
    ax.set_ylabel("held-out FVU")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
