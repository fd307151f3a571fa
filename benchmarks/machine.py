"""What a benchmark ran on and when, recorded beside its figures: the machine (CPU, threads, the
GPU when one ran), the date and the commit, from which docs/results.md names each result."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, or what `platform` knows elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def commit() -> str:
    """The checkout's commit (short hash), with '+changes' when the working tree differs from it;
    $CTXSAE_COMMIT when set (a copy of the tree on another machine may carry another HEAD)."""
    if os.environ.get("CTXSAE_COMMIT"):
        return os.environ["CTXSAE_COMMIT"]
    try:
        head = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head + ("+changes" if dirty else "")


def gpu_name(device: str | torch.device | None = None) -> str | None:
    """The CUDA device's name when `device` is a CUDA device, else None."""
    if device is None or torch.device(device).type != "cuda":
        return None
    return torch.cuda.get_device_name(torch.device(device))


def machine_info(device: str | torch.device | None = None) -> dict:
    """The machine, the date (UTC) and the commit of a benchmark run."""
    info = {"cpu": cpu_model(), "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
            "platform": platform.platform(), "torch": torch.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"), "commit": commit()}
    gpu = gpu_name(device)
    if gpu:
        info["gpu"] = gpu
    return info
