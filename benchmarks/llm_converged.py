"""The converged LLM comparison: per-position TopK against the gated contextual SAE and its
shuffled control on SmolLM2-135M-Instruct's resid.15 (`configs/llm/smollm2_converged_resid15.toml`),
with every SAE's learning rate chosen by a sweep and the headline budget repeated over seeds.

Three stages, each a `visinterp llm-compare` run in its own folder under --runs (all share one
harvest, hard-linked; a stage whose comparison.json exists is read back, so the script resumes):

1. `lr<rate>`: TopK, the contextual SAE and its control at the headline k, once per rate. Each
   series keeps the rate with the lowest held-out FVU among its converged runs (the lowest FVU
   overall, marked, when none converged). A rate at which an SAE of the stage diverged is
   recorded as diverged for all three. The control is trained at the contextual SAE's rate: it
   is that SAE's recipe with the positions shuffled.
2. `k_topk`, `k_contextual`: the other budgets at the chosen rates.
3. `seed<s>`: the headline budget again with other seeds (a seed draws the SAEs' initialisation,
   batch order and held-out split), for the spread.

The goals (`visinterp.analysis.matched_l0.goals`) are scored on seed 0's SAEs, with the
persistence ceiling of the TopK SAEs and the null baselines (unigram table, previous 1 and 4
positions) beside them. Writes JSON and a plot (FVU against L0, learning curves).

    python benchmarks/llm_converged.py --out benchmarks/results/llm_converged_smollm2_resid15.json
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

from ctxsae_common.files import write_json_atomic
from visinterp.analysis.matched_l0 import goals, matched_table, verdict
from visinterp.llm.config import load_llm_config
from visinterp.llm.run import REGIONS_FILE, TOKENS_FILE, compare
from scenes.figures import pyplot, save_figure
from machine import machine_info  # benchmarks/machine.py: run as python benchmarks/<name>.py
from rates import parse_rates
from stages import Stages, pick, spread, with_sweep

ROOT = Path(__file__).resolve().parents[1]
TOPK, CONTEXTUAL, CONTROL = "topk", "contextual_gated", "contextual_gated_control"
KEPT = ("series", "family", "k", "l0", "state_l0", "fvu", "delta_ce", "ce_recovered", "dead_fraction", "persistence",
        "n_region_tracking_features", "switch_rate_of_region_tracking_features", "best_auroc_by_region",
        "tokens", "epochs", "converged", "fvu_gain_last_quarter", "curve", "clipped_steps")


def plot(result: dict, path: Path) -> None:
    """Left: held-out FVU against L0 (TopK's sweep; the contextual SAE at its innovations and
    at its state; the control). Right: every seed-0 SAE's learning curve."""
    fig, (left, right) = pyplot().subplots(1, 2, figsize=(12, 4.2))
    saes = result["saes"]
    styles = {TOPK: ("C0", "o", "TopK"), CONTEXTUAL: ("C1", "s", "contextual (innovations)"),
              CONTROL: ("C7", "^", "shuffled control (innovations)")}
    for series, (colour, marker, label) in styles.items():
        rows = sorted((m for m in saes.values() if m["series"] == series), key=lambda m: m["l0"])
        left.plot([m["l0"] for m in rows], [m["fvu"] for m in rows], marker=marker, color=colour, label=label)
        if series == CONTEXTUAL:
            left.plot([m["state_l0"] for m in rows], [m["fvu"] for m in rows], marker=marker, color=colour,
                      linestyle=":", fillstyle="none", label="contextual (state)")
    left.axhline(result["baselines"]["unigram"], color="k", linestyle="--", linewidth=0.8, label="unigram null")
    left.set(xscale="log", yscale="log", xlabel="L0 (codes a token)", ylabel="held-out FVU")
    left.legend(fontsize=8)
    for i, (name, m) in enumerate(saes.items()):
        style = {"per-position": "-", "contextual": "--", "control": ":"}[m["family"]]
        right.plot([p["tokens"] for p in m["curve"]], [p["fvu"] for p in m["curve"]], style, color=f"C{i % 10}",
                   label=f"{name}{'' if m['converged'] else ' (not converged)'}")
    right.set(xlabel="training tokens", ylabel="held-out FVU", yscale="log")
    right.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.suptitle(f"SmolLM2-135M-Instruct {result['hook']}: converged comparison (seed 0)")
    save_figure(fig, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=ROOT / "configs/llm/smollm2_converged_resid15.toml")
    p.add_argument("--out", type=Path, default=Path("runs/llm_converged_smollm2_resid15.json"), help="the JSON")
    p.add_argument("--runs", type=Path, default=Path("runs/llm_converged_resid15"), help="the stages' run folders")
    p.add_argument("--harvest-from", type=Path, default=None,
                   help="an llm-compare folder with the same corpus and hook whose harvest to reuse (hard links)")
    p.add_argument("--lr", type=lambda text: parse_rates(text, allow_default=False), default=[1e-3, 3e-3, 1e-2], help="learning rates swept (default %(default)s)")
    p.add_argument("--headline-k", type=int, default=8, help="the budget of the rate sweep and the seeds")
    p.add_argument("--seeds", type=int, default=3, help="seeds at the headline budget (seed 0 included)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: PyTorch's)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    cfg = load_llm_config(args.config)
    hk = args.headline_k
    if hk not in cfg.sweep.k or hk not in cfg.sweep.k_contextual:
        p.error(f"--headline-k {hk} must be in the config's sweep.k {list(cfg.sweep.k)} and sweep.k_contextual "
                f"{list(cfg.sweep.k_contextual)}")
    if args.seeds < 1:
        p.error("--seeds must be at least 1")
    if args.threads is not None:
        torch.set_num_threads(max(1, args.threads))
    stages = Stages(lambda c, out: compare(c, out, progress=not args.no_progress, device=args.device),
                    "comparison.json", ("store", TOKENS_FILE, REGIONS_FILE), args.runs, args.harvest_from)

    def stage(name: str, may_diverge: bool = False, **sweep) -> dict:
        return stages(name, with_sweep(cfg, **sweep), may_diverge, ", ".join(f"{k} {v}" for k, v in sweep.items()))

    start = time.perf_counter()

    # 1. the rate sweep at the headline budget
    names = {TOPK: f"topk_k{hk}", CONTEXTUAL: f"contextual_gated_k{hk}", CONTROL: f"contextual_gated_k{hk}_control"}
    # (a stage in which an SAE diverged counts as diverged for every series of it)
    runs = {lr: stage(f"lr{lr:g}", may_diverge=True, k=(hk,), k_contextual=(hk,), lr=lr, seed=0) for lr in args.lr}
    by_rate = {lr: run["saes"] for lr, run in runs.items()}
    sweep = {s: {f"{lr:g}": ({y: by_rate[lr][name][y] for y in ("fvu", "l0", "state_l0", "converged",
                                                                  "fvu_gain_last_quarter")}
                             if name in by_rate[lr] else {"diverged": runs[lr]["diverged"]})
                 for lr in args.lr} for s, name in names.items()}
    chosen = {s: pick({lr: by_rate[lr].get(names[s]) for lr in args.lr}) for s in (TOPK, CONTEXTUAL)}
    lr_topk, lr_ctx = chosen[TOPK]["lr"], chosen[CONTEXTUAL]["lr"]
    first = runs[lr_topk]  # what every stage shares: the model, the windows, CE clean, the null baselines

    # 2. the other budgets at the chosen rates
    saes = {names[TOPK]: by_rate[lr_topk][names[TOPK]]}
    saes |= {n: m for n, m in by_rate[lr_ctx].items() if m["family"] != "per-position"}
    other_k = tuple(k for k in cfg.sweep.k if k != hk)
    other_kc = tuple(k for k in cfg.sweep.k_contextual if k != hk)
    if other_k:
        saes |= stage("k_topk", per_position=("topk",), k=other_k, carries=(), lr=lr_topk, seed=0)["saes"]
    if other_kc:
        saes |= stage("k_contextual", per_position=(), k=(), carries=("gated",), k_contextual=other_kc, lr=lr_ctx,
                      seed=0)["saes"]
    saes = {n: {k: m[k] for k in KEPT if k in m} for n, m in saes.items()}

    # 3. the headline budget over seeds
    per_seed = [{n: m for n, m in saes.items() if m["k"] == hk}]
    for s in range(1, args.seeds):
        if lr_topk == lr_ctx:
            rows = stage(f"seed{s}", k=(hk,), k_contextual=(hk,), lr=lr_topk, seed=s)["saes"]
        else:
            rows = (stage(f"seed{s}_topk", k=(hk,), carries=(), lr=lr_topk, seed=s)["saes"]
                    | stage(f"seed{s}_contextual", per_position=(), k=(), k_contextual=(hk,), lr=lr_ctx, seed=s)["saes"])
        per_seed.append(rows)
    seeds = {name: {y: spread([rows[name][y] for rows in per_seed]) for y in ("fvu", "l0", "state_l0", "delta_ce")}
             | {"converged": [rows[name]["converged"] for rows in per_seed]}
             for name in per_seed[0]}
    seeds["contextual_minus_topk_fvu"] = spread([rows[names[CONTEXTUAL]]["fvu"] - rows[names[TOPK]]["fvu"]
                                                 for rows in per_seed])

    ctx_l0 = sorted(m["l0"] for m in saes.values() if m["family"] == "contextual")
    scored = goals(saes)
    result = {
        "model": first["model"], "hook": first["hook"], "window": first["window"],
        "windows_harvested": first["windows_harvested"], "held_out_windows": first["held_out_windows"],
        "windows_left_out_as_outliers": first["windows_left_out_as_outliers"], "ce_windows": first["ce_windows"],
        "config": dataclasses.asdict(cfg), "headline_k": hk, "rates": args.lr, "rate_sweep": sweep,
        "chosen": chosen, "saes": saes, "goals": scored, "matched_l0": matched_table(saes, ctx_l0),
        "verdict": verdict(scored), "baselines": first["baselines"], "ce_clean": first["ce_clean"],
        "ceiling": {n: m["persistence"] for n, m in saes.items() if "persistence" in m},
        "all_converged": all(m["converged"] for m in saes.values()), "seeds": seeds,
        "seconds": time.perf_counter() - start, "stage_seconds": stages.seconds, "machine": machine_info()}
    write_json_atomic(args.out, result)
    plot(result, args.out.with_suffix(".png"))

    print(f"\nrate sweep at k {hk} (held-out FVU, * = converged):")
    for s, row in sweep.items():
        print(f"  {s:<28}" + "".join(f"{lr:>8} " + ("diverged " if "diverged" in m else
                                                         f"{m['fvu']:.4f}{'*' if m['converged'] else ' '}")
                                     for lr, m in row.items()))
    print(f"chosen: TopK {lr_topk:g}, contextual {lr_ctx:g}")
    print(f"\n{'SAE':<30}{'L0':>7}{'state':>8}{'FVU':>8}{'dCE':>8}{'epochs':>8}{'conv':>6}")
    for n, m in saes.items():
        print(f"{n:<30}{m['l0']:>7.2f}{m['state_l0']:>8.2f}{m['fvu']:>8.4f}{m['delta_ce']:>8.3f}{m['epochs']:>8.2f}"
              f"{str(m['converged']):>6}")
    b = result["baselines"]
    print(f"\nnulls: unigram {b['unigram']:.3f}, previous 1 {b['previous_1']:.3f}, previous 4 {b['previous_4']:.3f}")
    for n, q in result["ceiling"].items():
        print(f"ceiling {n}: {q['persistent_fraction']:.3f} active before, run {q['mean_run_length']:.2f}, "
              f"best ratio {q['best_innovation_ratio']:.2f}x")
    for n, m in seeds.items():
        v = m.get("fvu", m)  # contextual_minus_topk_fvu is one spread
        print(f"seeds, {n}{' FVU' if 'fvu' in m else ''}: {v['mean']:.4f} +- {v['std']:.4f}")
    print(result["verdict"])
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
