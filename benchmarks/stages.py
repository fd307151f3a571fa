"""What the converged comparisons share (`llm_converged.py`, `image_converged.py`).

Each stage is one job (`visinterp llm-compare` or `visinterp run`) in its own folder under one
runs folder, every stage reading one harvest through hard links; a stage whose result file exists
is read back, so a stopped benchmark resumes where it stopped (only if its config.json agrees
with the stage's config: another config's folder is refused, never mixed in). On top of them,
`converged_comparison` is the procedure at one activation site:

1. the rate sweep: TopK, the gated contextual SAE and its shuffled control at the headline k,
   once per rate; each series keeps the lowest held-out FVU among its converged runs (the lowest
   overall, marked, when none converged). The control trains at the contextual SAE's rate: it is
   that recipe with the positions shuffled;
2. the other budgets at the chosen rates;
3. the headline budget again with other seeds, for the spread (of FVU, L0 and quality, and of
   the contextual SAE's innovation ratio against seed 0's TopK sweep, the only full one);

then the goals (`visinterp.analysis.matched_l0.goals`) on seed 0's SAEs, with the persistence
ceiling of the TopK SAEs beside them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch

from ctxsae_common.errors import InputError
from ctxsae_common.files import write_json_atomic, write_text_atomic
from ctxsae_core.pool import check_jobs
from rates import lowest_converged, parse_rates
from visinterp.analysis.matched_l0 import goals, l0_for_value, matched_table, series_points, verdict

DIVERGED_FILE = "diverged.json"
TOPK, CONTEXTUAL, CONTROL = "topk", "contextual_gated", "contextual_gated_control"
TRAINING = ("tokens", "epochs", "converged", "fvu_gain_last_quarter", "curve", "clipped_steps")
KEPT = ("series", "family", "k", "l0", "state_l0", "fvu", "dead_fraction", "persistence", "threshold_sensitivity",
        *TRAINING)  # at every site
SWEPT = ("fvu", "l0", "state_l0", "converged", "fvu_gain_last_quarter")


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


def add_arguments(p: argparse.ArgumentParser, headline_k: int) -> None:
    """The options of the procedure every converged comparison takes."""
    p.add_argument("--lr", type=lambda text: parse_rates(text, allow_default=False), default=[1e-3, 3e-3, 1e-2],
                   help="learning rates swept (default %(default)s)")
    p.add_argument("--headline-k", type=int, default=headline_k, help="the budget of the rate sweep and the seeds")
    p.add_argument("--seeds", type=int, default=3, help="seeds at the headline budget (seed 0 included)")
    p.add_argument("--variant", type=parse_variant, default=None,
                   help=f"an ablation ({', '.join(sorted(VARIANTS))}, or several joined by '+'): the contextual SAEs "
                        "and controls with this change, in stage folders of their own, against the plain run's TopK "
                        "SAEs (read back, trained there if missing)")
    p.add_argument("--headline-only", action="store_true",
                   help="train the contextual SAEs and controls at the headline k only (skip the other budgets): "
                        "a first look at an ablation")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: PyTorch's)")
    p.add_argument("--keep-stages", type=Path, default=None, metavar="DIR",
                   help="copy each finished stage's result and config.json to DIR/<stage>/, and read a stage the runs "
                        "folder lacks from there: commit DIR, and a fresh checkout goes on where the run stopped")
    p.add_argument("--jobs", type=int, default=1,
                   help="SAEs of a stage trained at a time, each in a worker process on its share of the threads "
                        "(default 1; the figures are the same either way)")
    p.add_argument("--no-progress", action="store_true")


def check_arguments(p: argparse.ArgumentParser, args: argparse.Namespace, sweep: Any) -> None:
    """A parser error for options the config's [sweep] cannot run; sets the CPU threads."""
    hk = args.headline_k
    if hk not in sweep.k or hk not in sweep.k_contextual:
        p.error(f"--headline-k {hk} must be in the config's sweep.k {list(sweep.k)} and sweep.k_contextual "
                f"{list(sweep.k_contextual)}")
    if args.seeds < 1:
        p.error("--seeds must be at least 1")
    try:
        check_jobs(args.jobs)
    except InputError as e:
        p.error(str(e))
    if args.threads is not None:
        torch.set_num_threads(max(1, args.threads))


def contextual_budgets(args: argparse.Namespace, sweep: Any) -> tuple[int, ...]:
    """The contextual SAEs' budgets: the config's, or the headline k alone with --headline-only."""
    return (args.headline_k,) if args.headline_only else tuple(sweep.k_contextual)


def config_differences(stored: dict, wanted: dict) -> list[str]:
    """Where a run folder's config.json (`stored`) and a stage's config (`wanted`, JSON-ready) disagree,
    as "field: stored -> wanted". A field the stored config lacks was added to the code after that run
    and is not counted."""
    def walk(a: Any, b: Any, at: str) -> list[str]:
        if isinstance(a, dict) and isinstance(b, dict):
            return [d for key in b if key in a for d in walk(a[key], b[key], f"{at}.{key}" if at else key)]
        return [] if a == b else [f"{at}: {a} -> {b}"]
    return walk(json.loads(json.dumps(stored)), json.loads(json.dumps(wanted)), "")  # tuples as lists


def check_same_config(folder: Path, wanted: dict) -> None:
    """InputError unless the run in `folder` was configured as `wanted` (what resuming would read back)."""
    found = config_differences(json.loads((folder / "config.json").read_text()), wanted)
    if found:
        listed = "; ".join(found[:3]) + ("; ..." if len(found) > 3 else "")
        raise InputError(f"{folder} holds a run of another config ({listed}): pass another --runs, or delete the "
                         "folder to retrain it")


class Stages:
    """Runs (or reads back) one job per stage, all on one harvest: `harvest_from`'s where it holds
    one, else the first stage's.

    job(cfg, out) runs a job into `out` and leaves `result` (a JSON file) there, and the job's
    config as config.json, which `record(cfg)` must reproduce; `harvest` names what of a run folder
    to share between stages. `prepare()`, where given, is called once before the first stage that
    has to be trained (the image benchmarks render and harvest into `harvest_from` there), so that
    a benchmark whose stages are all read back needs no harvest. `source(result)`, where given,
    names what a stage's result was harvested from (the image benchmarks: the autoencoder), and
    `prepare()` returns the same for the harvest it made: every stage must agree, and a harvest
    that differs from the stages read so far is refused before anything trains on it (an
    autoencoder trained again on another machine is another autoencoder). With `kept`, every finished
    stage's result and config.json (and its diverged.json) are also copied to `kept/<stage>/`, and
    a stage the runs folder lacks is read from there: a few JSON files that can be committed, so
    that a benchmark longer than a session goes on where it stopped on a fresh checkout (whose runs
    folder is empty), instead of training its finished stages again."""

    def __init__(self, job: Callable[[Any, Path], Any], result: str, harvest: tuple[str, ...], runs: Path,
                 harvest_from: Path | None = None, *, record: Callable[[Any], dict], kept: Path | None = None,
                 prepare: Callable[[], Any] | None = None, source: Callable[[dict], Any] | None = None):
        self.job, self.result, self.shared, self.runs, self.record = job, result, harvest, runs, record
        self.kept, self.prepare, self.harvest_from, self.source = kept, prepare, harvest_from, source
        self.first_source: tuple[str, Any] | None = None  # (where it was read, the source)
        self.harvest: Path | None = None  # the folder whose harvest a trained stage links, once known
        self.seconds: dict[str, float] = {}

    def _shared_harvest(self) -> Path | None:
        """The harvest a stage about to be trained links: made by `prepare` first (once), then
        `harvest_from`'s where it holds one, else that of the first stage that ran (None: the stage
        harvests for itself)."""
        if self.prepare is not None:
            prepare, self.prepare = self.prepare, None
            made = prepare()
            if self.source is not None:
                self._same_source("the harvest made for it", made)
        if self.harvest is None and self.harvest_from is not None:
            if all((self.harvest_from / n).exists() for n in self.shared):
                self.harvest = self.harvest_from
            else:
                print(f"{self.harvest_from}: no harvest there ({', '.join(self.shared)}), so this stage harvests",
                      flush=True)
            self.harvest_from = None
        return self.harvest

    def __call__(self, name: str, cfg: Any, may_diverge: bool = False, **sweep) -> dict:
        """The stage's result: the job on `cfg` with the fields `sweep` of its [sweep] table
        replaced. With `may_diverge` (a rate sweep), a stage in which an SAE diverged returns
        {"saes": {}, "diverged": the trainer's message} instead of raising, and is not retried
        when the benchmark resumes."""
        out = self.runs / name
        done, failed = out / self.result, out / DIVERGED_FILE
        staged = dataclasses.replace(cfg, sweep=dataclasses.replace(cfg.sweep, **sweep))
        if (out / "config.json").is_file():
            check_same_config(out, self.record(staged))
        elif self.kept is not None and (self.kept / name / "config.json").is_file():
            check_same_config(self.kept / name, self.record(staged))
            copy = self.kept / name  # a stage finished on another checkout: read back from its copy
            if may_diverge and (copy / DIVERGED_FILE).is_file():
                return {"saes": {}, **json.loads((copy / DIVERGED_FILE).read_text())}
            if (copy / self.result).is_file():
                return self._checked(name, json.loads((copy / self.result).read_text()))
        if may_diverge and failed.is_file():
            return {"saes": {}, **json.loads(failed.read_text())}
        if not done.is_file():
            if (harvest := self._shared_harvest()) is not None:
                link_harvest(harvest, out, self.shared)
            print(f"{name}: {', '.join(f'{k} {v}' for k, v in sweep.items())}", flush=True)
            start = time.perf_counter()
            try:
                self.job(staged, out)
            except InputError as e:
                if not (may_diverge and "diverged" in str(e)):
                    raise
                write_json_atomic(failed, {"diverged": str(e)})
                self._keep(name, out)
                return {"saes": {}, "diverged": str(e)}
            finally:
                self.seconds[name] = time.perf_counter() - start
        if self.harvest is None:
            self.harvest = out
        self._keep(name, out)
        return self._checked(name, json.loads(done.read_text()))

    def _same_source(self, where: str, source: Any) -> None:
        """InputError unless `source` is that of the stages before (the first one sets it)."""
        source = json.loads(json.dumps(source))  # tuples as lists, as a result read back has them
        if self.first_source is None:
            self.first_source = (where, source)
            return
        first, theirs = self.first_source
        if source != theirs:
            differs = "; ".join(config_differences(theirs, source)) or f"{theirs} -> {source}"
            raise InputError(f"{where}: harvested from another source than {first} ({differs}); the stages of one "
                             "comparison share one harvest: restore that harvest under --runs, or start over with "
                             "new --runs and --keep-stages folders")

    def _checked(self, name: str, result: dict) -> dict:
        """`result`, once its source agrees with the stages' before."""
        if self.source is not None:
            self._same_source(f"stage {name}", self.source(result))
        return result

    def _keep(self, name: str, out: Path) -> None:
        """Copy a finished stage's result, config.json and diverged.json from `out` to kept/<name>/
        (whole files, each written atomically), unless they are there."""
        if self.kept is None:
            return
        for file in (self.result, "config.json", DIVERGED_FILE):
            target = self.kept / name / file
            if (out / file).is_file() and not target.is_file():
                target.parent.mkdir(parents=True, exist_ok=True)
                write_text_atomic(target, (out / file).read_text())


# Ablations of the contextual SAE: the [sweep] fields each one changes (`ablated`)
VARIANTS = {"signed": {"signed": True}, "position_gates": {"position_gates": True},
            "no_anneal": {"k_anneal_fraction": 0.0}, "no_carry_loss": {"carry_coeff": 0.0},
            "cap": {"max_per_position": 4.0}, "carry_freeze": {"carry_freeze_at_decay": True}}


def variant_fields(name: str) -> dict:
    """The [sweep] fields an ablation changes: one of VARIANTS, or several joined by '+'
    (`carry_freeze+no_anneal`: the fields of both). ValueError for an unknown name, or for parts
    that repeat or set the same field."""
    parts = name.split("+")
    unknown = [part for part in parts if part not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant {', '.join(map(repr, unknown))}: choose from {', '.join(sorted(VARIANTS))}, "
                         "or several joined by '+'")
    fields: dict = {}
    for part in parts:
        shared = set(fields) & set(VARIANTS[part])  # a part named twice sets all its fields twice
        if shared:
            raise ValueError(f"variant {name!r} sets {', '.join(sorted(shared))} twice: name each change once")
        fields.update(VARIANTS[part])
    return fields


def parse_variant(text: str) -> str:
    """argparse type of --variant: the name with its parts in sorted order (one stage folder for
    `no_anneal+carry_freeze` and `carry_freeze+no_anneal`)."""
    try:
        variant_fields(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return "+".join(sorted(text.split("+")))


def ablated(plain: Callable[..., dict], variant: Callable[..., dict], fields: dict, defaults: Any) -> Callable[..., dict]:
    """A stage function for an ablation: the contextual SAEs and controls of each stage trained
    by `variant` with the [sweep] `fields` changed, the per-position SAEs read from (or, where
    missing, trained by) `plain` with the stage unchanged, so both arms share one reference.
    Where one arm diverged, the stage is marked diverged with the other arm's SAEs kept (the
    per-position SAEs of a rate at which only the variant diverged still count in the sweep).
    `defaults`: the config's [sweep], for the fields a stage does not set."""
    def stage(name: str, may_diverge: bool = False, **sweep) -> dict:
        def wanted(field: str) -> bool:
            return bool(sweep.get(field, getattr(defaults, field)))

        found = []
        if wanted("per_position") and wanted("k"):
            base = plain(name, may_diverge, **sweep)
            found.append({**base, "saes": {n: m for n, m in base["saes"].items() if m["family"] == "per-position"}})
        if wanted("carries"):
            found.append(variant(name, may_diverge, **{**sweep, "per_position": (), "k": (), **fields}))
        saes = {n: m for f in found for n, m in f["saes"].items()}  # a diverged arm has none
        failed = [f["diverged"] for f in found if "diverged" in f]
        whole = [f for f in found if "diverged" not in f]
        return {**(whole[0] if whole else {}), "saes": saes, **({"diverged": failed[0]} if failed else {})}
    return stage


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


def converged_comparison(stage: Callable[..., dict], k: tuple[int, ...], k_contextual: tuple[int, ...], headline_k: int,
                         rates: list[float], seeds: int, kept: tuple[str, ...], quality: str = "delta_ce",
                         higher_is_better: bool = False, quality_label: str = "delta CE") -> dict:
    """The procedure of the module docstring at one site. `stage(name, may_diverge=False,
    **sweep)` runs or reads back one stage with those [sweep] fields and returns its result, its
    SAEs under "saes" by name; `kept` names the fields of an SAE's row to keep. Returns the rate
    stages' results under "rate_runs" beside what goes into the benchmark's JSON."""
    hk = headline_k
    names = {TOPK: f"topk_k{hk}", CONTEXTUAL: f"contextual_gated_k{hk}", CONTROL: f"contextual_gated_k{hk}_control"}
    # 1. (a series with no row in a diverged stage counts as diverged at that rate)
    runs = {lr: stage(f"lr{lr:g}", may_diverge=True, k=(hk,), k_contextual=(hk,), lr=lr, seed=0) for lr in rates}
    by_rate = {lr: run["saes"] for lr, run in runs.items()}
    sweep = {s: {f"{lr:g}": ({y: by_rate[lr][name][y] for y in SWEPT} if name in by_rate[lr]
                             else {"diverged": runs[lr]["diverged"]})
                 for lr in rates} for s, name in names.items()}
    chosen = {s: pick({lr: by_rate[lr].get(names[s]) for lr in rates}) for s in (TOPK, CONTEXTUAL)}
    lr_topk, lr_ctx = chosen[TOPK]["lr"], chosen[CONTEXTUAL]["lr"]

    # 2.
    saes = {names[TOPK]: by_rate[lr_topk][names[TOPK]]}
    saes |= {n: m for n, m in by_rate[lr_ctx].items() if m["family"] != "per-position"}
    other_k = tuple(b for b in k if b != hk)
    other_kc = tuple(b for b in k_contextual if b != hk)
    if other_k:
        saes |= stage("k_topk", per_position=("topk",), k=other_k, carries=(), lr=lr_topk, seed=0)["saes"]
    if other_kc:
        saes |= stage("k_contextual", per_position=(), k=(), carries=("gated",), k_contextual=other_kc, lr=lr_ctx,
                      seed=0)["saes"]
    saes = {n: {f: m[f] for f in kept if f in m} for n, m in saes.items()}

    # 3.
    per_seed = [{n: m for n, m in saes.items() if m["k"] == hk}]
    for s in range(1, seeds):
        if lr_topk == lr_ctx:
            rows = stage(f"seed{s}", k=(hk,), k_contextual=(hk,), lr=lr_topk, seed=s)["saes"]
        else:
            rows = (stage(f"seed{s}_topk", k=(hk,), carries=(), lr=lr_topk, seed=s)["saes"]
                    | stage(f"seed{s}_contextual", per_position=(), k=(), k_contextual=(hk,), lr=lr_ctx, seed=s)["saes"])
        per_seed.append(rows)
    spreads = {name: {y: spread([rows[name][y] for rows in per_seed]) for y in ("fvu", "l0", "state_l0", quality)}
               | {"converged": [rows[name]["converged"] for rows in per_seed]}
               for name in per_seed[0]}
    spreads["contextual_minus_topk_fvu"] = spread([rows[names[CONTEXTUAL]]["fvu"] - rows[names[TOPK]]["fvu"]
                                                   for rows in per_seed])
    topk_curve = series_points(saes, "topk", "fvu")
    if len(topk_curve) >= 2:  # each seed's contextual SAE against seed 0's TopK sweep (the only full one)
        spreads["innovation_ratio"] = spread([l0_for_value(topk_curve, rows[names[CONTEXTUAL]]["fvu"], extrapolate=True)
                                              / rows[names[CONTEXTUAL]]["l0"] for rows in per_seed])

    ctx_l0 = sorted(m["l0"] for m in saes.values() if m["family"] == "contextual")
    scored = goals(saes, quality=quality, higher_is_better=higher_is_better)
    return {"headline_k": hk, "rates": rates, "rate_sweep": sweep, "chosen": chosen, "saes": saes, "goals": scored,
            "matched_l0": matched_table(saes, ctx_l0, ("fvu", quality)), "verdict": verdict(scored, quality_label),
            "ceiling": {n: m["persistence"] for n, m in saes.items() if "persistence" in m},
            "all_converged": all(m["converged"] for m in saes.values()), "seeds": spreads, "rate_runs": runs}


def print_comparison(result: dict, quality: str, column: str) -> None:
    """The rate sweep, the SAEs, the ceiling and the seeds' spread as tables on stdout."""
    print(f"\nrate sweep at k {result['headline_k']} (held-out FVU, * = converged):")
    for s, row in result["rate_sweep"].items():
        print(f"  {s:<28}" + "".join(f"{lr:>8} " + ("diverged " if "diverged" in m else
                                                         f"{m['fvu']:.4f}{'*' if m['converged'] else ' '}")
                                     for lr, m in row.items()))
    print(f"chosen: TopK {result['chosen'][TOPK]['lr']:g}, contextual {result['chosen'][CONTEXTUAL]['lr']:g}")
    print(f"\n{'SAE':<30}{'L0':>7}{'state':>8}{'FVU':>8}{column:>8}{'epochs':>8}{'conv':>6}")
    for n, m in result["saes"].items():
        print(f"{n:<30}{m['l0']:>7.2f}{m['state_l0']:>8.2f}{m['fvu']:>8.4f}{m[quality]:>8.3f}{m['epochs']:>8.2f}"
              f"{str(m['converged']):>6}")
    for n, q in result["ceiling"].items():
        print(f"ceiling {n}: {q['persistent_fraction']:.3f} active before, run {q['mean_run_length']:.2f}, "
              f"best ratio {q['best_innovation_ratio']:.2f}x")
    for n, m in result["seeds"].items():
        v = m.get("fvu", m)  # contextual_minus_topk_fvu and innovation_ratio are one spread each
        print(f"seeds, {n}{' FVU' if 'fvu' in m else ''}: {v['mean']:.4f} +- {v['std']:.4f}")
    print(result["verdict"])


def draw_comparison(left, right, saes: dict, position: str = "token", positions: str = "tokens") -> None:
    """Left: held-out FVU against L0 (TopK's sweep; the contextual SAE at its innovations and at
    its state; the control). Right: every SAE's learning curve."""
    styles = {TOPK: ("C0", "o", "TopK"), CONTEXTUAL: ("C1", "s", "contextual (innovations)"),
              CONTROL: ("C7", "^", "shuffled control (innovations)")}
    for series, (colour, marker, label) in styles.items():
        rows = sorted((m for m in saes.values() if m["series"] == series), key=lambda m: m["l0"])
        left.plot([m["l0"] for m in rows], [m["fvu"] for m in rows], marker=marker, color=colour, label=label)
        if series == CONTEXTUAL:
            left.plot([m["state_l0"] for m in rows], [m["fvu"] for m in rows], marker=marker, color=colour,
                      linestyle=":", fillstyle="none", label="contextual (state)")
    left.set(xscale="log", yscale="log", xlabel=f"L0 (codes a {position})", ylabel="held-out FVU")
    budgets = sorted({m["k"] for m in saes.values() if m.get("k")})
    left.set_xticks(budgets, [str(b) for b in budgets], minor=False)
    left.set_xticks([], minor=True)  # no crowded minor labels between the budgets
    for i, (name, m) in enumerate(saes.items()):
        style = {"per-position": "-", "contextual": "--", "control": ":"}[m["family"]]
        right.plot([p["tokens"] for p in m["curve"]], [p["fvu"] for p in m["curve"]], style, color=f"C{i % 10}",
                   label=f"{name}{'' if m['converged'] else ' (not converged)'}")
    right.set(xlabel=f"training {positions}", ylabel="held-out FVU", yscale="log")
    right.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
