r"""Ground truth for the contextual SAE: windows with known features, where some features hold
over long regions and others are drawn per position, so the true number of new features per
position is known (`ctxsae_core.synthetic`).

For per-position TopK, the contextual SAE with each carry, and each carry's shuffled-context
control (positions permuted within every window: same model, same budget), it sweeps the
sparsity, interpolates the L0 (innovations per position) needed to reach a target FVU, and
reports the state L0 there and dictionary recovery (mean over true features of the best
cosine with a decoder row). It prints a table, checks the goals, and writes results.json and
pareto.png into --out. Every model trains with what `ctxsae train` does given only --k and
--tokens: the CLI's batch (4096 positions) and TrainConfig's default learning rate and schedule.

    python benchmarks/synthetic_regions.py --out runs/synthetic_regions          # ~40 min, 2 cores
    python benchmarks/synthetic_regions.py --quick --out /tmp/smoke              # a minute: plumbing only

--tokens sets every family's training positions (default 3M; convergence is measured, and at 3M the
contextual SAEs are still improving). --rerun FAMILY... --reuse results.json retrains the named
families and keeps the others' points, which must have been trained with the same --tokens.

--lrs makes it a converged comparison, by the procedure of the real-activation ones
(`benchmarks/stages.py`): per-position TopK and each carry's contextual SAE train once per rate at
their headline k; each keeps the rate of its lowest held-out FVU among the runs that converged
(the lowest overall, marked, when none did); every other k, and the shuffled control (its carry's
recipe with the positions shuffled), trains at that rate. --carries keeps one carry:

    python benchmarks/synthetic_regions.py --lrs 1e-3,3e-3,default --tokens 12000000 --carries gated \
        --out runs/synthetic_regions_converged                                                # ~1.5 h, 2 cores

Each trained point is kept in `<out>/points/` as it ends, so a stopped run resumes: the same command
reads those points back and trains the rest.
"""

from __future__ import annotations

import argparse
import json
import dataclasses
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ctxsae_core import BatchTopK, ContextualConfig, SAEConfig, TopK, TrainConfig, make_axis
from ctxsae_common.cli import OneLineParser, positive_int
from ctxsae_common.errors import InputError
from ctxsae_common.files import read_json_object, write_json_atomic
from ctxsae_core.evaluate import evaluate
from ctxsae_core.cli import DEFAULT_BATCH_TOKENS
from ctxsae_core.sweep import train_sae
from ctxsae_core.trainer import default_lr
from ctxsae_core.synthetic import RegionsData, RegionsSpec, dictionary_recovery
from machine import machine_info  # benchmarks/machine.py: run as python benchmarks/<name>.py
from rates import lowest_converged, parse_rates

GOALS = {"min_ratio_vs_per_position": 2.5, "max_ratio_vs_true_rate": 1.5, "max_state_vs_true_active": 1.3,
         "min_gain_lost_by_control": 0.8}


@dataclass(frozen=True)
class Family:
    name: str
    arch: str  # "topk" or "contextual"
    carry: str | None
    shuffle: bool
    ks: tuple[int, ...]
    tokens: int
    lr: float | None = None  # None: TrainConfig's default rate


@dataclass(frozen=True)
class Setup:
    T: int = 64
    d: int = 128
    width: int = 512
    target_fvu: float = 0.10
    eval_windows: int = 256
    seed: int = 0


# name, arch, carry, shuffled context, budgets k with --quick, budgets k of the full run
SWEEPS = [("per-position topk", "topk", None, False, (8, 16), (14, 18, 22, 26)),
          ("contextual gated", "contextual", "gated", False, (4, 8), (4, 6, 8)),
          ("gated, shuffled control", "contextual", "gated", True, (4, 8), (8, 14, 20)),
          ("contextual attention", "contextual", "attention", False, (4, 8), (4, 6, 8)),
          ("attention, shuffled control", "contextual", "attention", True, (4, 8), (8, 14, 20))]
# with --lrs: the k at which a family's rate is swept (the sweep's point nearest the target FVU in
# the default-recipe run; the first k with --quick), and the family whose rate a control takes
HEADLINE_K = {"per-position topk": 18, "contextual gated": 6, "contextual attention": 6}
CONTROL_OF = {"gated, shuffled control": "contextual gated", "attention, shuffled control": "contextual attention"}
CARRIES = ("gated", "attention")
POINTS = "points"  # the run folder's subfolder of trained points, one JSON each


def families(quick: bool, tokens: int | None = None, carries: tuple[str, ...] = CARRIES) -> list[Family]:
    """The sweeps of per-position TopK and of `carries`, each trained for `tokens` positions
    (default: 40k with quick, else 3M)."""
    n = tokens or (40_000 if quick else 3_000_000)
    return [Family(name, arch, carry, shuffle, quick_ks if quick else ks, n)
            for name, arch, carry, shuffle, quick_ks, ks in SWEEPS if carry is None or carry in carries]


def rate(setup: Setup, lr: float | None) -> float:
    """The learning rate a family set to `lr` trains at: `lr`, or TrainConfig's default (None)."""
    return lr or default_lr(setup.width)


def headline_k(fam: Family) -> int:
    """The k at which `fam`'s learning rate is swept."""
    k = HEADLINE_K[fam.name]
    return k if k in fam.ks else fam.ks[0]


def train_one(setup: Setup, fam: Family, k: int) -> dict:
    """One point of a sweep, in its own process with one thread."""
    torch.set_num_threads(1)
    spec = RegionsSpec(d=setup.d)
    data = RegionsData(spec, setup.T, seed=setup.seed, batch_windows=setup_record(setup)["batch_windows"])
    held = data.windows(setup.eval_windows, seed=1)
    axis = make_axis("tokens", setup.T)
    if fam.arch == "contextual":
        cfg = ContextualConfig(d_in=setup.d, width=setup.width, activation=BatchTopK(k=k), carry=fam.carry)
    else:
        cfg = SAEConfig(d_in=setup.d, width=setup.width, activation=TopK(k=k))
    # the CLI's defaults: its batch, and the default learning rate (unless swept) and schedule of TrainConfig
    # held-out evaluations along the way give each point its learning curve and convergence
    train_cfg = TrainConfig(tokens=fam.tokens, lr=fam.lr, seed=setup.seed, shuffle_context=fam.shuffle, progress=False)
    start = time.perf_counter()
    try:
        trained = train_sae(cfg, train_cfg, data, axis, None, held.x, final_eval=False)
    except InputError as e:  # diverged: a point of the sweep all the same, not the end of the benchmark
        return {"family": fam.name, "k": k, "diverged": str(e), "tokens": fam.tokens, "lr": rate(setup, fam.lr)}
    seconds = time.perf_counter() - start
    model = trained.model
    result = evaluate(model, held.x, axis, shuffle_context=fam.shuffle, seed=setup.seed)
    # train_seconds include the held-out evaluations (16 of them)
    return {"family": fam.name, "k": k, "fvu": result["fvu"], "l0": result["l0"], "state_l0": result["state_l0"],
            "dead_fraction": result["dead_fraction"], "recovery": dictionary_recovery(data.dictionary, model.W_dec_FD.detach()),
            "train_seconds": seconds, "tokens": fam.tokens, "lr": trained.trainer.lr,
            "batch_windows": data.batch_windows,
            **{k: v for k, v in trained.trainer.summary(result).items()
               if k in ("converged", "fvu_gain_last_quarter", "decay_share_of_last_quarter_gain", "curve")}}


def at_target(points: list[dict], target: float, key: str) -> float | None:
    """`key` where the (L0, FVU) curve crosses the target FVU, interpolating linearly in
    log FVU between the two sweep points around it; None if the sweep does not reach it."""
    pts = sorted((p for p in points if "diverged" not in p), key=lambda p: p["l0"])
    for a, b in zip(pts, pts[1:]):
        if (a["fvu"] - target) * (b["fvu"] - target) <= 0 and a["fvu"] != b["fvu"]:
            w = (math.log(a["fvu"]) - math.log(target)) / (math.log(a["fvu"]) - math.log(b["fvu"]))
            return a[key] + w * (b[key] - a[key])
    return None


def setup_record(setup: Setup) -> dict:
    """The setup with what the defaults chose: windows a step (the CLI's batch) and learning rate."""
    return {**asdict(setup), "batch_windows": max(1, DEFAULT_BATCH_TOKENS // setup.T), "lr": default_lr(setup.width)}


def summarise(setup: Setup, fams: list[Family], points: list[dict]) -> dict:
    spec = RegionsSpec(d=setup.d)
    true_rate = spec.true_rate(setup.T)
    rows = {}
    for fam in fams:
        pts = [p for p in points if p["family"] == fam.name]
        trained = [p for p in pts if "diverged" not in p] or [{"recovery": None}]
        best = min(trained, key=lambda p: abs(p.get("fvu", math.inf) - setup.target_fvu))
        rows[fam.name] = {"l0_at_target": at_target(pts, setup.target_fvu, "l0"),
                          "state_l0_at_target": at_target(pts, setup.target_fvu, "state_l0"),
                          "recovery_at_target": at_target(pts, setup.target_fvu, "recovery") or best["recovery"],
                          "points": sorted(pts, key=lambda p: p["k"])}
    pp = rows["per-position topk"]["l0_at_target"]
    true_active = spec.n_groups + spec.local_per_position
    checks = {}
    for carry in (c for c in CARRIES if f"contextual {c}" in rows):
        ctx, state = rows[f"contextual {carry}"]["l0_at_target"], rows[f"contextual {carry}"]["state_l0_at_target"]
        ctl = rows[f"{carry}, shuffled control"]["l0_at_target"]
        ratio = pp / ctx if pp and ctx else None
        lost = (ctl - ctx) / (pp - ctx) if pp and ctx and ctl and pp != ctx else None
        if ctx and pp and ctl is None:  # the control never reached the target: it lost at least all of it
            lost = 1.0
        checks[carry] = {
            "ratio_vs_per_position": ratio, "ratio_vs_true_rate": ctx / true_rate if ctx else None,
            "state_vs_true_active": state / true_active if state else None, "gain_lost_by_control": lost,
            "meets_goals": bool(ratio and ratio >= GOALS["min_ratio_vs_per_position"]
                                and ctx / true_rate <= GOALS["max_ratio_vs_true_rate"]
                                and state and state / true_active <= GOALS["max_state_vs_true_active"]
                                and lost is not None and lost >= GOALS["min_gain_lost_by_control"])}
    return {"setup": setup_record(setup),
            "true_rate": true_rate, "true_per_position_l0": true_active,
            "goals": GOALS, "families": rows, "checks": checks,
            "machine": machine_info()}


def _fmt(v, spec=".2f"):
    return "-" if v is None else format(v, spec)


def print_table(summary: dict) -> None:
    s = summary["setup"]
    print(f"\nsynthetic regions: d={s['d']}, T={s['T']}, width={s['width']}; target FVU {s['target_fvu']}; "
          f"true new features per position {summary['true_rate']:.2f} (of {summary['true_per_position_l0']} active)")
    print(f"{'model':<30}{'L0 @ target':>12}{'state L0':>10}{'recovery':>10}   sweep (k: L0 / FVU)")
    for name, row in summary["families"].items():
        sweep = "  ".join(f"{p['k']}: diverged" if "diverged" in p else f"{p['k']}: {p['l0']:.1f}/{p['fvu']:.3f}"
                          for p in row["points"])
        print(f"{name:<30}{_fmt(row['l0_at_target']):>12}{_fmt(row['state_l0_at_target']):>10}"
              f"{_fmt(row['recovery_at_target'], '.3f'):>10}   {sweep}")
    g = summary["goals"]
    for carry, c in summary["checks"].items():
        print(f"{carry:>10}: {_fmt(c['ratio_vs_per_position'])}x fewer innovations than per-position (goal >= "
              f"{g['min_ratio_vs_per_position']}), {_fmt(c['ratio_vs_true_rate'])}x the true rate (goal <= "
              f"{g['max_ratio_vs_true_rate']}), state L0 {_fmt(c['state_vs_true_active'])}x the true active count "
              f"(goal <= {g['max_state_vs_true_active']}), control loses {_fmt(c['gain_lost_by_control'], '.0%')} of the gain "
              f"(goal >= {g['min_gain_lost_by_control']:.0%}): {'MEETS' if c['meets_goals'] else 'MISSES'} the goals")


def plot(summary: dict, path: Path) -> None:
    from scenes.figures import pyplot, save_figure
    from visinterp.report.page import label_log_axis

    fig, ax = pyplot().subplots(figsize=(9.5, 4.5))
    styles = {"per-position topk": ("k", "o", "-"), "contextual gated": ("C0", "s", "-"),
              "gated, shuffled control": ("C0", "s", ":"), "contextual attention": ("C1", "^", "-"),
              "attention, shuffled control": ("C1", "^", ":")}
    for name, row in summary["families"].items():
        color, marker, ls = styles.get(name, ("C2", "x", "-"))
        pts = [p for p in row["points"] if "diverged" not in p]
        ax.plot([p["l0"] for p in pts], [p["fvu"] for p in pts], color=color, marker=marker, ls=ls, label=name)
    ax.axhline(summary["setup"]["target_fvu"], color="grey", lw=0.8, ls="--", label="target FVU")
    ax.axvline(summary["true_rate"], color="green", lw=0.8, ls="--", label="true new features / position")
    ax.set_xlabel("L0: innovations paid per position")
    ax.set_ylabel("held-out FVU")
    ax.set_yscale("log")
    label_log_axis(ax.yaxis)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title("Synthetic regions: sparsity vs reconstruction")
    save_figure(fig, path, dpi=120)


def _reused_points(args, setup: Setup, fams: list[Family]) -> list[dict]:
    """Sweep points of the families not in --rerun, from --reuse (same setup and budget only);
    InputError names what does not match."""
    if args.rerun is None:
        return []
    names = {f.name for f in fams}
    unknown = sorted(set(args.rerun) - names)
    if unknown or args.reuse is None:
        raise InputError(f"--rerun needs --reuse and names from {sorted(names)}; got {unknown or args.rerun}")
    if not args.reuse.is_file():
        raise InputError(f"--reuse {args.reuse} is not a file: pass an earlier run's results.json")
    old = json.loads(args.reuse.read_text())
    if any(old["setup"].get(k) != v for k, v in setup_record(setup).items()):
        raise InputError(f"{args.reuse} was measured under another setup: {old['setup']}; rerun everything")
    kept = [p for name, row in old["families"].items() if name not in args.rerun for p in row["points"]]
    budget = fams[0].tokens  # every family's
    other = sorted({f"{p['family']}: {p['tokens']:,}" for p in kept if p["tokens"] != budget})
    if other:
        raise InputError(f"{args.reuse} trained the kept families for other budgets ({'; '.join(other)}), "
                         f"not {budget:,} positions: pass their --tokens, or rerun them too")
    return kept


def point_file(folder: Path, setup: Setup, fam: Family, k: int) -> Path:
    """Where one trained point is kept in the run folder, so that a stopped run resumes."""
    name = fam.name.replace(", ", "-").replace(" ", "_")
    return folder / POINTS / f"{name}_k{k}_lr{rate(setup, fam.lr):g}_{fam.tokens}.json"


def read_point(path: Path, setup: Setup) -> dict | None:
    """A point kept by an earlier run (None if there is none); InputError for one trained under
    another setup."""
    if not path.is_file():
        return None
    kept = read_json_object(path, "a kept point")
    if kept.get("setup") != setup_record(setup):
        raise InputError(f"{path} was trained under another setup ({kept.get('setup')}): delete it, or pass another --out")
    return kept["point"]


def train_points(jobs: list[tuple], workers: int, label: str = "", folder: Path | None = None) -> list[dict]:
    """Train `jobs` ((setup, family, k) each) on `workers` processes, printing each point as it ends.
    With `folder`, each point is kept there as it ends, and a point kept by an earlier run is read
    back instead of trained again."""
    points, todo = [], []
    for job in jobs:
        kept = read_point(point_file(folder, *job), job[0]) if folder is not None else None
        if kept is None:
            todo.append(job)
        else:
            points.append(kept)
    print(f"{len(todo)} trainings{label} on {workers} worker(s)"
          + (f" ({len(points)} read back from {folder / POINTS})" if points else "") + "...", flush=True)
    with ProcessPoolExecutor(workers) as pool:
        futures = {pool.submit(train_one, *job): job for job in todo}
        for done, future in enumerate(as_completed(futures), 1):
            point = future.result()
            points.append(point)
            if folder is not None:
                write_json_atomic(point_file(folder, *futures[future]),
                                  {"setup": setup_record(futures[future][0]), "point": point})
            head = f"[{done}/{len(todo)}] {point['family']} k={point['k']} lr={point['lr']:g}"
            if "diverged" in point:
                print(f"  {head}: {point['diverged']}", flush=True)
            else:
                print(f"  {head}: L0 {point['l0']:.2f} FVU {point['fvu']:.4f} state L0 {point['state_l0']:.1f} "
                      f"converged {point['converged']} ({point['train_seconds']:.0f}s)", flush=True)
    return points


def choose_rates(fams: list[Family], swept: list[dict]) -> dict[str, dict]:
    """Per family, the rate sweep's runs and its choice: each swept family keeps its lowest held-out
    FVU among the runs that converged (lowest overall when none did); a control takes its carry's
    rate. A family whose every run diverged has no rate ("lr": None)."""
    choices = {}
    for fam in fams:
        if fam.name in CONTROL_OF:
            continue
        runs = [p for p in swept if p["family"] == fam.name]
        trained = [p for p in runs if "diverged" not in p]
        best = lowest_converged(trained) if trained else None
        choices[fam.name] = {"k": headline_k(fam), "runs": sorted(runs, key=lambda p: p["lr"]),
                             "lr": best and best["lr"], "converged": bool(best and best["converged"])}
    for control, of in CONTROL_OF.items():
        if any(f.name == control for f in fams):
            choices[control] = {"lr": choices[of]["lr"], "of": of}
    return choices


def sweep_rates(setup: Setup, fams: list[Family], lrs: list[float | None], workers: int,
                folder: Path | None = None) -> tuple[list[dict], dict]:
    """The converged comparison: each swept family at its headline k once per rate, then every
    other point at the chosen rates. Returns the points of the chosen rates, and the rates swept
    with the choices made among them (the result's "rates")."""
    resolved = sorted({rate(setup, lr) for lr in lrs})
    swept = train_points(_longest_first([(setup, dataclasses.replace(fam, lr=lr), headline_k(fam)) for fam in fams
                                         if fam.name not in CONTROL_OF for lr in resolved]), workers,
                         " of the rate sweep", folder)
    choices = choose_rates(fams, swept)
    kept = [p for p in swept if p["lr"] == choices[p["family"]]["lr"]]
    rest = [(setup, dataclasses.replace(fam, lr=choices[fam.name]["lr"]), k) for fam in fams for k in fam.ks
            if choices[fam.name]["lr"] is not None and not any(p["family"] == fam.name and p["k"] == k for p in kept)]
    print("chosen rates: " + ", ".join(f"{name} {c['lr']:g}" for name, c in choices.items() if c["lr"]), flush=True)
    return (kept + train_points(_longest_first(rest), workers, " at the chosen rates", folder),
            {"swept": resolved, "choices": choices})


def _longest_first(jobs: list[tuple]) -> list[tuple]:
    """The contextual SAEs (several times TopK's time a step) first, so TopK fills the gaps at the end."""
    return sorted(jobs, key=lambda job: job[1].arch == "topk")


def main(argv=None) -> int:
    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/synthetic_regions"), help="folder for results.json and pareto.png")
    p.add_argument("--quick", action="store_true", help="tiny budgets: checks the plumbing, not the goals")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="parallel trainings, one thread each")
    p.add_argument("--rerun", nargs="+", default=None, metavar="FAMILY",
                   help="train only these families (names as in the table) and take the other families' points "
                        "from --reuse: for a change that touches one model only")
    p.add_argument("--reuse", type=Path, default=None, help="an earlier results.json, with --rerun")
    p.add_argument("--tokens", type=positive_int, default=None,
                   help="training positions of every SAE (default: 3,000,000; 40,000 with --quick)")
    p.add_argument("--lrs", type=parse_rates, default=None, metavar="RATES",
                   help="learning rates to sweep, comma-separated ('default': TrainConfig's), e.g. 1e-3,3e-3,default; "
                        "without it every SAE trains at the default rate")
    p.add_argument("--carries", choices=("gated", "attention", "both"), default="both",
                   help="the contextual SAEs to train (with their controls)")
    args = p.parse_args(argv)
    carries = CARRIES if args.carries == "both" else (args.carries,)
    setup, fams = Setup(), families(args.quick, args.tokens, carries)
    if args.lrs is not None and args.rerun is not None:
        p.error("--lrs sweeps every family's rate: it does not combine with --rerun; drop one of them")
    if args.rerun is not None and args.carries != "both":
        p.error("--rerun keeps the other families of a full run: it does not combine with --carries; drop one of them")
    try:
        reused = _reused_points(args, setup, fams)
        for path in sorted((args.out / POINTS).glob("*.json")):  # before any training: every kept point's setup
            read_point(path, setup)
    except InputError as e:
        p.error(str(e))
    start = time.perf_counter()
    rates = None
    if args.lrs is not None:
        points, rates = sweep_rates(setup, fams, args.lrs, args.workers, args.out)
    else:
        jobs = [(setup, fam, k) for fam in fams for k in fam.ks if not any(q["family"] == fam.name for q in reused)]
        jobs.sort(key=lambda j: j[1].carry == "attention")  # gated and per-position first: the quicker results
        points = list(reused) + train_points(jobs, args.workers, folder=args.out)
    summary = summarise(setup, fams, points)
    if rates is not None:
        summary["rates"] = rates
    summary["wall_seconds"] = time.perf_counter() - start
    summary["quick"] = args.quick
    summary["reused_families"] = sorted({q["family"] for q in reused})
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "results.json", summary)
    plot(summary, args.out / "pareto.png")
    print_table(summary)
    print(f"\nwrote {args.out / 'results.json'} and {args.out / 'pareto.png'} in {summary['wall_seconds'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
