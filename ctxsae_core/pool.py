"""Training a sweep's SAEs several at a time, each in a worker process of its own (`--jobs N` of
`visinterp run` and `visinterp llm-compare`).

A sweep's SAEs are independent: each reads the same activation store and writes its own folder.
One SAE keeps few cores busy on the CPU (its matrix products are small, and the contextual SAE
walks its positions one after another), so N SAEs side by side on one thread each finish sooner
than the same SAEs one after another on N threads. `train_ahead` trains them that way, each into
its folder. The job then calls `train_sae` on each folder as before, which resumes from the
finished run's last checkpoint: the threshold's calibration and the closing evaluation run again
on the same weights, so every figure is that of the SAE trained alone at the workers' thread
count (tested)."""

from __future__ import annotations

import dataclasses
import multiprocessing
from functools import partial
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ctxsae_common.errors import InputError
from ctxsae_core.config import ContextualConfig
from ctxsae_core.distributed import group
from ctxsae_core.sweep import train_sae
from ctxsae_core.trainer import EVAL_FILE


def check_jobs(jobs: int) -> int:
    """`jobs` if a job can train that many SAEs at a time, else a one-line InputError."""
    if jobs < 1:
        raise InputError(f"--jobs {jobs} must be at least 1 (the SAEs trained at a time)")
    if jobs > 1 and group().world > 1:
        raise InputError(f"--jobs {jobs} with torchrun: the ranks already train every SAE together; pass --jobs 1, "
                         "or run without torchrun")
    return jobs


def _train_one(threads: int, call: dict[str, Any]) -> None:
    """A worker's task: one SAE, on `threads` CPU threads (a spawned process starts at PyTorch's default)."""
    torch.set_num_threads(threads)
    train_sae(**call)


def train_ahead(calls: list[dict[str, Any]], jobs: int, threads: int | None = None, progress: bool = True) -> None:
    """Train the SAEs of `calls` (each the keyword arguments of a `train_sae` call with its own
    `out_dir`) `jobs` at a time in spawned worker processes on `threads` CPU threads each
    (default: this process's threads shared among the workers, at least 1). A folder that holds a
    finished SAE is left alone, and the contextual SAEs, the slow ones, start first. Nothing
    happens with `jobs` 1 or fewer than two SAEs to train: the caller's own `train_sae` calls train
    them in turn. The first error in a worker stops the others and is raised here."""
    check_jobs(jobs)
    if any(call.get("out_dir") is None for call in calls):
        raise ValueError("train_ahead needs an out_dir for every SAE: the caller resumes each from its folder")
    todo = [call for call in calls if not (Path(call["out_dir"]) / EVAL_FILE).is_file()]
    if jobs == 1 or len(todo) < 2:
        return
    threads = threads or max(1, torch.get_num_threads() // jobs)
    todo.sort(key=lambda call: not isinstance(call["config"], ContextualConfig))  # stable: else the sweep's order
    quiet = [{**call, "train_cfg": dataclasses.replace(call["train_cfg"], progress=False)} for call in todo]
    workers = min(jobs, len(todo))
    desc = f"train {len(todo)} SAEs, {workers} at a time ({threads} thread{'s' * (threads != 1)} each)"
    # a fresh process per SAE (maxtasksperchild); leaving the block terminates the pool, so an error stops every worker
    with multiprocessing.get_context("spawn").Pool(workers, maxtasksperchild=1) as pool:
        for _ in tqdm(pool.imap_unordered(partial(_train_one, threads), quiet), total=len(quiet), desc=desc,
                      unit="SAE", disable=not progress):
            pass
