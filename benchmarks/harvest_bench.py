"""What the harvest benchmarks share: bare vs harvest timed side by side (alternating, medians),
and peak memory measured in a fresh subprocess per size so one harvest's peak cannot hide
another's (the child harvests and prints `child_report`, the parent collects)."""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Callable


def side_by_side(bare: Callable[[], float], harvest: Callable[[], float], repeats: int, n: int, unit: str) -> dict:
    """`bare()` and `harvest()` (each returning the seconds it measured) run alternately
    `repeats` times over n items; their medians as items/s and the ratio harvest / bare speed."""
    t_bare, t_harvest = [], []
    for _ in range(repeats):
        t_bare.append(bare())
        t_harvest.append(harvest())
    b, h = statistics.median(t_bare), statistics.median(t_harvest)
    return {unit: n, f"bare_{unit}_per_s": n / b, f"harvest_{unit}_per_s": n / h, "ratio": b / h}


def child_report(store: Path, **extra) -> None:
    """In the child: print this process's peak RSS and the store's size as one JSON line."""
    store_bytes = sum(p.stat().st_size for p in store.rglob("*.safetensors"))
    print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "store_mb": store_bytes / 2**20, **extra}))


def measure(script: str, sizes: list[int], child_args) -> dict[int, dict]:
    """{size: child_report} for `python script --memory-child *child_args(size)` per size."""
    out = {}
    for n in sizes:
        stdout = subprocess.run([sys.executable, script, "--memory-child", *map(str, child_args(n))],
                                check=True, capture_output=True, text=True).stdout
        out[n] = json.loads(stdout.strip().splitlines()[-1])
    return out


def print_table(memory: dict[int, dict], unit: str) -> None:
    print(f"{unit:>8}{'store MB':>10}{'peak RSS MB':>13}")
    for n, m in memory.items():
        print(f"{n:>8}{m['store_mb']:>10.0f}{m['peak_rss_mb']:>13.0f}")
