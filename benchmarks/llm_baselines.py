"""What a carry could save, layer by layer: SmolLM2-135M-Instruct's residual stream at resid.3,
resid.9 and resid.15, per-position TopK only (`configs/llm/smollm2_baselines_resid*.toml`).

For each layer, `visinterp llm-compare` harvests the windows, trains per-position TopK and
reports beside it the persistence ceiling (the share of the SAE's active features at a token that
were active at the token before, their mean run length, and the best innovation ratio any carry
could reach from it) and the null baselines (each held-out activation predicted by its token's
mean over the training windows, and by the mean of the previous 1 and 4 activations). This
script runs the three comparisons (resuming any that is done) and gathers their figures into one
JSON for the results page.

    python benchmarks/llm_baselines.py --out benchmarks/results/llm_baselines_smollm2.json   # ~40 min, 2 cores
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from ctxsae_common.files import write_json_atomic
from visinterp.llm.config import load_llm_config
from visinterp.llm.run import compare
from machine import machine_info  # benchmarks/machine.py: run as python benchmarks/<name>.py

LAYERS = (3, 9, 15)
KEPT = ("k", "l0", "fvu", "delta_ce", "ce_recovered", "dead_fraction", "persistence", "tokens", "epochs",
        "converged", "fvu_gain_last_quarter", "curve")


def layer_row(cfg_path: Path, out: Path, progress: bool) -> dict:
    cfg = load_llm_config(cfg_path)
    start = time.perf_counter()
    result = compare(cfg, out, progress=progress, device="cpu")
    saes = {name: {k: m[k] for k in KEPT if k in m} for name, m in result["saes"].items()}
    return {"hook": cfg.hook, "config": str(cfg_path), "windows": cfg.corpus.windows, "window": cfg.corpus.window,
            "width": cfg.sweep.width, "lr": cfg.sweep.lr, "batch_windows": cfg.sweep.batch_windows, "baselines": result["baselines"],
            "ce_clean": result["ce_clean"], "saes": saes, "seconds": time.perf_counter() - start}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/llm_baselines_smollm2.json"), help="the gathered JSON")
    p.add_argument("--runs", type=Path, default=Path("runs"), help="where each layer's llm-compare folder goes")
    p.add_argument("--layers", type=int, nargs="+", default=list(LAYERS), choices=LAYERS)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: PyTorch's)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            p.error("--threads must be at least 1")
        torch.set_num_threads(args.threads)
    root = Path(__file__).resolve().parents[1]
    rows = []
    for layer in args.layers:
        cfg = root / "configs" / "llm" / f"smollm2_baselines_resid{layer}.toml"
        print(f"resid.{layer}: {cfg.name}", flush=True)
        rows.append(layer_row(cfg, args.runs / f"llm_baselines_resid{layer}", not args.no_progress))
    print(f"\n{'hook':<10}{'L0':>6}{'FVU':>8}{'conv':>6}{'epochs':>8}{'active before':>15}{'run':>6}{'best ratio':>12}"
          f"{'unigram':>9}{'prev 1':>8}{'prev 4':>8}")
    for r in rows:
        b = r["baselines"]
        for m in r["saes"].values():
            q = m["persistence"]
            print(f"{r['hook']:<10}{m['l0']:>6.1f}{m['fvu']:>8.4f}{str(m['converged']):>6}{m['epochs']:>8.2f}"
                  f"{q['persistent_fraction']:>15.3f}{q['mean_run_length']:>6.2f}{q['best_innovation_ratio']:>11.2f}x"
                  f"{b['unigram']:>9.3f}{b['previous_1']:>8.3f}{b['previous_4']:>8.3f}")
    write_json_atomic(args.out, {"model": "SmolLM2-135M-Instruct", "layers": rows, "machine": machine_info()})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
