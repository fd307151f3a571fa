"""What the benchmarks that sweep a learning rate share: reading the rates from the command
line, and choosing among the runs by the rule every comparison uses (the lowest FVU among the
runs that converged)."""

from __future__ import annotations

import argparse


def parse_rates(text: str, allow_default: bool = True) -> list[float | None]:
    """'1e-3,default' -> [0.001, None] (None: the trainer's own default rate, where allowed)."""
    rates = []
    for item in (part.strip() for part in text.split(",")):
        try:
            rate = None if allow_default and item == "default" else float(item)
        except ValueError:
            rate = float("nan")
        if rate is not None and not rate > 0:
            raise argparse.ArgumentTypeError(f"learning rate {item!r}: give positive numbers"
                                             f"{' or default' if allow_default else ''}, comma-separated")
        rates.append(rate)
    return rates


def lowest_converged(runs: list[dict], fvu: str = "fvu") -> dict:
    """The sweep's choice: the run with the lowest `fvu` among those that converged (among all
    runs if none did; its own "converged" then says so)."""
    pool = [r for r in runs if r["converged"]] or runs
    return min(pool, key=lambda r: r[fvu])
