"""What the staged comparisons share (`llm_converged.py`, `image_converged.py`): each stage is one
job (`visinterp llm-compare` or `visinterp run`) in its own folder under one runs folder, every
stage reading the first one's harvest through hard links; a stage whose result file exists is
read back, so a stopped benchmark resumes where it stopped. Also the rate sweep's choice and a
seed spread."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import statistics
import time
from pathlib import Path
from typing import Any, Callable

from ctxsae_common.errors import InputError
from ctxsae_common.files import write_json_atomic
from rates import lowest_converged

DIVERGED_FILE = "diverged.json"


def link_harvest(src: Path, dst: Path, names: tuple[str, ...]) -> None:
    """Give `dst` the files and folders `names` of `src` (a job's harvest: its activation store,
    token windows or rendered images) as hard links, so that the job there reads them instead of
    harvesting again. A folder is linked under a temporary name and renamed when whole."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in names:
        source, target = src / name, dst / name
        if target.exists() or not source.exists():
            continue
        if source.is_dir():
            tmp = target.with_name(target.name + ".linking")
            shutil.rmtree(tmp, ignore_errors=True)
            for f in sorted(source.rglob("*")):
                (tmp / f.relative_to(source)).parent.mkdir(parents=True, exist_ok=True)
                if f.is_file():
                    os.link(f, tmp / f.relative_to(source))
            tmp.rename(target)
        else:
            os.link(source, target)


def with_sweep(cfg: Any, **changes) -> Any:
    """A job config with fields of its [sweep] table replaced."""
    return dataclasses.replace(cfg, sweep=dataclasses.replace(cfg.sweep, **changes))


class Stages:
    """Runs (or reads back) one job per stage, all on the first stage's harvest.

    job(cfg, out) runs a job into `out` and leaves `result` (a JSON file) there; `harvest` names
    what of a run folder to share between stages."""

    def __init__(self, job: Callable[[Any, Path], Any], result: str, harvest: tuple[str, ...], runs: Path,
                 harvest_from: Path | None = None):
        self.job, self.result, self.shared, self.runs = job, result, harvest, runs
        if harvest_from is not None and not all((harvest_from / n).exists() for n in harvest):
            print(f"{harvest_from}: no harvest there ({', '.join(harvest)}), so the first stage harvests", flush=True)
            harvest_from = None
        self.harvest = harvest_from
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str, cfg: Any, may_diverge: bool = False, note: str = "") -> dict:
        """The stage's result. With `may_diverge` (a rate sweep), a stage in which an SAE
        diverged returns {"saes": {}, "diverged": the trainer's message} instead of raising, and
        is not retried when the benchmark resumes."""
        out = self.runs / name
        done, failed = out / self.result, out / DIVERGED_FILE
        if may_diverge and failed.is_file():
            return {"saes": {}, **json.loads(failed.read_text())}
        if not done.is_file():
            if self.harvest is not None:
                link_harvest(self.harvest, out, self.shared)
            print(f"{name}: {note}", flush=True)
            start = time.perf_counter()
            try:
                self.job(cfg, out)
            except InputError as e:
                if not (may_diverge and "diverged" in str(e)):
                    raise
                write_json_atomic(failed, {"diverged": str(e)})
                return {"saes": {}, "diverged": str(e)}
            finally:
                self.seconds[name] = time.perf_counter() - start
        if self.harvest is None:
            self.harvest = out
        return json.loads(done.read_text())


def pick(runs: dict[float, dict | None]) -> dict:
    """The sweep's choice among {rate: SAE row, None where the stage diverged}: the lowest
    held-out FVU among the converged runs (among all, with any_converged false, if none did)."""
    rows = [{**m, "lr": lr} for lr, m in runs.items() if m is not None]
    if not rows:
        raise SystemExit("every learning rate of the sweep diverged: pass lower rates with --lr")
    best = lowest_converged(rows)
    return {"lr": best["lr"], "any_converged": bool(best["converged"])}


def spread(values: list[float]) -> dict:
    """The values over seeds with their mean and sample standard deviation."""
    return {"values": values, "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0}
