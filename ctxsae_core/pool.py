"""Training a sweep's SAEs several at a time, each in a worker process of its own (`--jobs N` of
`visinterp run` and `visinterp llm-compare`).

A sweep's SAEs are independent: each reads the same activation store and writes its own folder.
One SAE keeps few cores busy on the CPU (its matrix products are small, and the contextual SAE
walks its positions one after another), so N SAEs side by side on one thread each finish sooner
than the same SAEs one after another on N threads. `train_ahead` trains them that way, each into
its folder; `train_sweep`, the jobs' path, then calls `train_sae` on each folder, which resumes
from the finished run's last checkpoint: the threshold's calibration and the closing evaluation
run again, in the job, on the weights and learning curve of the SAE trained alone at the
workers' thread count (tested: with the job on that thread count too, every figure is the same
to the last bit)."""

from __future__ import annotations

import dataclasses
import multiprocessing
import sys
import traceback
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ctxsae_common.errors import InputError
from ctxsae_common.threads import available_cores
from ctxsae_core.config import ContextualConfig
from ctxsae_core.distributed import group
from ctxsae_core.axes import ContextAxis
from ctxsae_core.sweep import SAESpec, SweepConfig, TrainedSAE, train_config, train_sae
from ctxsae_core.trainer import EVAL_FILE


def check_jobs(jobs: int) -> int:
    """`jobs` if a job can train that many SAEs at a time, else a one-line InputError."""
    if jobs < 1:
        raise InputError(f"--jobs {jobs} must be at least 1 (the SAEs trained at a time)")
    if jobs > 1 and group().world > 1:
        raise InputError(f"--jobs {jobs} with torchrun: the ranks already train every SAE together; pass --jobs 1, "
                         "or run without torchrun")
    return jobs


def _train_one(threads: int, call: dict[str, Any], conn: Connection) -> None:
    """A worker: one SAE on `threads` CPU threads (a spawned process starts at PyTorch's default),
    then None down `conn`, or the error: an InputError as it is, anything else as its traceback."""
    try:
        torch.set_num_threads(threads)
        train_sae(**call)
        conn.send(None)
    except InputError as e:
        conn.send(e)
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send(RuntimeError(f"training {call['out_dir']} in a worker process failed:\n{traceback.format_exc()}"))
    finally:
        conn.close()


def _outcome(conn: Connection, proc: BaseProcess, call: dict[str, Any]) -> BaseException | None:
    """What a worker sent once it is done (the worker joined), or the error of one that died
    without a word (killed, out of memory)."""
    try:
        sent = conn.recv()
    except EOFError:  # the pipe closed with nothing in it
        proc.join()
        return RuntimeError(f"the worker process training {call['out_dir']} died (exit code {proc.exitcode}) before "
                            "it finished: out of memory? Pass a smaller --jobs")
    proc.join()
    return sent


def train_ahead(calls: list[dict[str, Any]], jobs: int, threads: int | None = None, progress: bool = True) -> None:
    """Train the SAEs of `calls` (each the keyword arguments of a `train_sae` call with its own
    `out_dir`) `jobs` at a time, each in a spawned worker process on `threads` CPU threads
    (default: this process's threads shared among the workers, at least 1). A folder that holds
    a finished SAE is left alone, and the contextual SAEs, the slow ones, start first. Nothing
    happens with `jobs` 1 or fewer than two SAEs to train: the caller's own `train_sae` calls
    train them in turn. The first error in a worker (or a worker that dies) stops the others and
    is raised here."""
    check_jobs(jobs)
    if any(call.get("out_dir") is None for call in calls):
        raise ValueError("train_ahead needs an out_dir for every SAE: the caller resumes each from its folder")
    todo = [call for call in calls if not (Path(call["out_dir"]) / EVAL_FILE).is_file()]
    if jobs == 1 or len(todo) < 2:
        return
    threads = threads or max(1, torch.get_num_threads() // jobs)
    todo.sort(key=lambda call: not isinstance(call["config"], ContextualConfig))  # stable: else the sweep's order
    pending = [{**call, "train_cfg": dataclasses.replace(call["train_cfg"], progress=False)} for call in todo]
    workers, cores = min(jobs, len(todo)), available_cores()
    each = f"{threads} thread{'s' * (threads != 1)} each"
    if workers * threads > cores:
        print(f"warning: {workers} workers on {each}, {cores} core(s): they share cores and each runs slower; pass a "
              "smaller --jobs or --threads", file=sys.stderr)
    spawn = multiprocessing.get_context("spawn")
    running: dict[Connection, tuple[BaseProcess, dict[str, Any]]] = {}  # by the end the worker reports down
    bar = tqdm(total=len(pending), unit="SAE", disable=not progress,
               desc=f"train {len(pending)} SAEs, {workers} at a time ({each})")
    try:
        while pending or running:
            while pending and len(running) < workers:
                call = pending.pop(0)
                receive, send = spawn.Pipe(duplex=False)
                proc = spawn.Process(target=_train_one, args=(threads, call, send), daemon=True)
                proc.start()
                send.close()  # the worker holds the sending end now
                running[receive] = (proc, call)
            for receive in wait(list(running)):  # a message, or the end of the pipe of a worker that died
                proc, call = running.pop(receive)
                error = _outcome(receive, proc, call)
                if error is not None:
                    raise error
                bar.update(1)
    finally:
        for proc, _ in running.values():  # an error, or an interrupt: the others stop too
            proc.terminate()
            proc.join()
        bar.close()


def sweep_calls(specs: list[SAESpec], sweep: SweepConfig, batches: Iterable[Tensor], axis: ContextAxis | None,
                root: Path, eval_windows: Tensor, device: str | torch.device, progress: bool = True,
                **train_overrides: Any) -> list[dict[str, Any]]:
    """The `train_sae` keyword arguments of a job's sweep, one dict per SAE of `specs`: trained on
    `batches` (one stream for all, as a job's SAEs read one store) into root/<its name>, with
    held-out evaluations along the way and none at the end (the job evaluates each itself);
    `train_overrides` go to each SAE's TrainConfig."""
    return [{"config": spec.config, "train_cfg": train_config(sweep, spec, progress, **train_overrides),
             "batches": batches, "axis": axis, "out_dir": root / spec.name, "eval_windows": eval_windows,
             "device": device, "final_eval": False} for spec in specs]


def train_sweep(specs: list[SAESpec], sweep: SweepConfig, batches: Iterable[Tensor], axis: ContextAxis | None,
                root: Path, eval_windows: Tensor, device: str | torch.device, jobs: int = 1, progress: bool = True,
                threads: int | None = None, **train_overrides: Any) -> Iterator[tuple[SAESpec, TrainedSAE]]:
    """A job's sweep (`sweep_calls`) trained `jobs` at a time (`train_ahead`, on `threads` each);
    yields (spec, trained SAE) in the sweep's order."""
    calls = sweep_calls(specs, sweep, batches, axis, root, eval_windows, device, progress, **train_overrides)
    train_ahead(calls, jobs, threads, progress)
    for spec, call in zip(specs, calls):  # read back from each folder (or trained here, in turn, with jobs 1)
        yield spec, train_sae(**call)
