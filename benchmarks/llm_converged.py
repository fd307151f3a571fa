r"""The converged LLM comparison: per-position TopK against the gated contextual SAE and its
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

`--variant` runs an ablation (`stages.VARIANTS`): the contextual SAEs and controls changed, their
stages in `<runs>/<variant>/`, against the plain run's TopK SAEs (read back from `<runs>/`); the
docs' results page sets its JSON beside the plain run's.

    python benchmarks/llm_converged.py --variant no_carry_loss --seeds 1 --headline-only \
        --out benchmarks/results/llm_converged_smollm2_resid15_no_carry_loss.json
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from ctxsae_common.errors import InputError
from ctxsae_common.files import write_json_atomic
from visinterp.llm.config import load_llm_config
from visinterp.llm.run import REGIONS_FILE, TOKENS_FILE, compare
from scenes.figures import pyplot, save_figure
from machine import machine_info  # benchmarks/machine.py: run as python benchmarks/<name>.py
import stages

ROOT = Path(__file__).resolve().parents[1]
KEPT = (*stages.KEPT, "delta_ce", "ce_recovered", "n_region_tracking_features",
        "switch_rate_of_region_tracking_features", "best_auroc_by_region")


def plot(result: dict, path: Path) -> None:
    """Held-out FVU against L0 with the unigram null, and every seed-0 SAE's learning curve."""
    fig, (left, right) = pyplot().subplots(1, 2, figsize=(12, 4.2))
    stages.draw_comparison(left, right, result["saes"])
    left.axhline(result["baselines"]["unigram"], color="k", linestyle="--", linewidth=0.8, label="unigram null")
    left.legend(fontsize=8)
    variant = f", contextual SAEs: {result['variant']}" if result.get("variant") else ""
    fig.suptitle(f"SmolLM2-135M-Instruct {result['hook']}: converged comparison (seed 0{variant})", y=1.0)
    save_figure(fig, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=ROOT / "configs/llm/smollm2_converged_resid15.toml")
    p.add_argument("--out", type=Path, default=Path("runs/llm_converged_smollm2_resid15.json"), help="the JSON")
    p.add_argument("--runs", type=Path, default=Path("runs/llm_converged_resid15"), help="the stages' run folders")
    p.add_argument("--harvest-from", type=Path, default=None,
                   help="an llm-compare folder with the same corpus and hook whose harvest to reuse (hard links)")
    stages.add_arguments(p, headline_k=8)
    args = p.parse_args(argv)
    cfg = load_llm_config(args.config)
    stages.check_arguments(p, args, cfg.sweep)
    run = stages.Stages(lambda c, out: compare(c, out, progress=not args.no_progress, device=args.device,
                                               jobs=args.jobs),
                        "comparison.json", ("store", TOKENS_FILE, REGIONS_FILE), args.runs, args.harvest_from,
                        record=dataclasses.asdict, kept=args.keep_stages)

    def in_folder(prefix: str):
        def stage(name: str, may_diverge: bool = False, **sweep) -> dict:
            return run(f"{prefix}{name}", cfg, may_diverge, **sweep)
        return stage
    stage = in_folder("")
    if args.variant is not None:
        stage = stages.ablated(stage, in_folder(f"{args.variant}/"), stages.variant_fields(args.variant), cfg.sweep)

    start = time.perf_counter()
    try:
        found = stages.converged_comparison(stage, cfg.sweep.k, stages.contextual_budgets(args, cfg.sweep),
                                            args.headline_k, args.lr, args.seeds, KEPT)
    except InputError as e:
        p.error(str(e))
    # what every stage shares (the model, the windows, CE clean, the null baselines), from a rate stage
    first = found.pop("rate_runs")[found["chosen"][stages.TOPK]["lr"]]
    result = {
        "model": first["model"], "hook": first["hook"], "window": first["window"],
        "windows_harvested": first["windows_harvested"], "held_out_windows": first["held_out_windows"],
        "windows_left_out_as_outliers": first["windows_left_out_as_outliers"], "ce_windows": first["ce_windows"],
        "config": dataclasses.asdict(cfg), "variant": args.variant, "headline_only": args.headline_only, **found,
        "baselines": first["baselines"], "ce_clean": first["ce_clean"], "seconds": time.perf_counter() - start,
        "stage_seconds": run.seconds, "machine": machine_info()}
    write_json_atomic(args.out, result)
    plot(result, args.out.with_suffix(".png"))

    b = result["baselines"]
    print(f"\nnulls: unigram {b['unigram']:.3f}, previous 1 {b['previous_1']:.3f}, previous 4 {b['previous_4']:.3f}")
    stages.print_comparison(result, "delta_ce", "dCE")
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
