"""How many CPU threads PyTorch uses. Its default is one per core, and when other work already
keeps cores busy, threads that spin waiting for each other on a shared core can make a run many
times slower (docs/threads.md has the measurements). The default here is the cores this process
may use that are idle now, shared among torchrun's ranks on the machine, at least 1."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from ctxsae_common.errors import InputError

SAMPLE_SECONDS = 0.2  # how long `busy_cores` watches the CPUs


def _cgroup_cores() -> float | None:
    """The CPU quota of this process's cgroup (v2 `cpu.max`), in cores, or None when unlimited."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    return None if quota == "max" else int(quota) / int(period)


def available_cores() -> int:
    """The cores this process may run on: its CPU affinity (or os.cpu_count()), within its cgroup's quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = _cgroup_cores()
    return max(1, min(cores, int(quota))) if quota else cores


def _cpu_times(cpus: set[int]) -> tuple[int, int] | None:
    """(busy, total) jiffies summed over `cpus` from /proc/stat, or None where it cannot be read."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    busy = total = 0
    for line in lines:
        name, *fields = line.split()
        if not (name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus):
            continue
        values = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
        total += sum(values)
        busy += sum(values) - values[3] - values[4]
    return (busy, total) if total else None


def busy_cores(seconds: float = SAMPLE_SECONDS) -> float:
    """How many of this process's cores other work keeps busy now: /proc/stat watched for `seconds`
    (Linux), else the 1-minute load average (which lags new work by about a minute)."""
    try:
        cpus = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        cpus = set(range(os.cpu_count() or 1))
    before = _cpu_times(cpus)
    if before is not None:
        time.sleep(seconds)
        after = _cpu_times(cpus)
        if after is not None and after[1] > before[1]:
            return len(cpus) * (after[0] - before[0]) / (after[1] - before[1])
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def default_threads() -> int:
    """The available cores that are not busy now, shared among the processes torchrun started on
    this machine (LOCAL_WORLD_SIZE), at least 1."""
    idle = max(1, round(available_cores() - busy_cores()))
    return max(1, idle // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def set_threads(n: int | None) -> int:
    """Use `n` CPU threads (None: `default_threads()`); returns the number in use."""
    if n is not None and n < 1:
        raise InputError(f"--threads {n} must be at least 1")
    n = default_threads() if n is None else n
    torch.set_num_threads(n)
    return n


def add_threads_flag(parser: argparse.ArgumentParser) -> None:
    """Add --threads to a command's parser (`run_command` applies it before the command runs)."""
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="CPU threads for PyTorch (default: the available cores that are idle when the command "
                             "starts, at least 1; a thread per core on a busy machine slows a run down several times)")
