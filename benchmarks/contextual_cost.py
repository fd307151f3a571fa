"""The contextual SAE's training cost per token against per-position TopK's, at every point of a
grid of shapes: d in {64, 128, 576, 2304}, width in {256, 1024, 4608, 16384}, 16 and 64 windows
of 64 positions a step. Goals: the gated carry at most 2x TopK's cost per token, the attention
carry at most 4x.

A walk's cost grows with the state it carries, so the contextual SAEs are timed where the state
is real: every feature persists with gate 0.65 and no resets, and carried values are cut at 0.3x
the median innovation's value, so a value lives about three steps and the state holds several
times the innovations, as in trained models (each point reports both). The innovations are TopK's, so every model pays exactly k codes a position
and the ratio isolates the carry's cost. Windows are synthetic with persistent regions
(`ctxsae_core.synthetic`). Each model trains `--warmup` untimed steps, then `--steps` timed ones
(the median step is reported), one model after another in one process, on the same batches.

    python benchmarks/contextual_cost.py --out benchmarks/results/contextual_cost_cpu.json
    python benchmarks/contextual_cost.py --device cuda --out benchmarks/results/contextual_cost_cuda.json
    python benchmarks/contextual_cost.py --quick --out /tmp/cost.json        # two small points: plumbing
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from pathlib import Path

import torch

from ctxsae_common.device import resolve_device
from ctxsae_common.files import write_json_atomic
from ctxsae_core import ContextualConfig, SAEConfig, TopK, TrainConfig, make_axis
from ctxsae_core.checkpoint import build_sae
from ctxsae_core.metrics import l0
from ctxsae_core.synthetic import RegionsData, RegionsSpec
from ctxsae_core.trainer import Trainer
from machine import machine_info  # benchmarks/machine.py: run as python benchmarks/<name>.py

GRID = {"d": (64, 128, 576, 2304), "width": (256, 1024, 4608, 16384), "windows": (16, 64)}
QUICK = {"d": (64,), "width": (256, 1024), "windows": (16,)}
T = 64
GOALS = {"gated": 2.0, "attention": 4.0}
CARRY_GATE = 0.65  # every feature's persistence gate in the timed models
# carried values are cut at this fraction of the median innovation: with the gate, a value lives
# about 3 steps, and the state holds 2-4x the innovations at every d (a fixed cut carries nothing
# at large d, where codes are small in normalised units)
CARRY_CUT = 0.3
RESET_OFF = -30.0  # raw reset factors: softplus(-30) ~ 1e-13, no resets


def carrying_(model) -> None:
    """Set the carry so that every feature persists with gate CARRY_GATE and nothing resets."""
    carry = model.carry
    with torch.no_grad():
        # persistence_gate = sigmoid(p) * 1.1 (capped at 1): p = logit(CARRY_GATE / 1.1)
        target = torch.tensor(CARRY_GATE / 1.1)
        carry.persistence.fill_(float(torch.log(target / (1 - target))))
        carry.reset_in_raw.fill_(RESET_OFF)
        carry.reset_out_raw.fill_(RESET_OFF)


def batches_for(d: int, windows: int, n: int, seed: int = 0) -> list[torch.Tensor]:
    spec = RegionsSpec(d=d, n_groups=16, values_per_group=8, n_local=128, local_per_position=4)
    data = RegionsData(spec, T, seed=seed, batch_windows=windows)
    return list(itertools.islice(data.iter_from(0), n))


@torch.no_grad()
def typical_innovation(d: int, width: int, k: int, batch: torch.Tensor) -> float:
    """The median value of the k codes a position pays for at initialisation (normalised units)."""
    torch.manual_seed(0)
    model = build_sae(SAEConfig(d_in=d, width=width, activation=TopK(k=k)))
    model.init_from_data_(batch)
    centred = batch.reshape(-1, d) * model.act_scale - model.b_dec_D
    return float(torch.nn.functional.linear(centred, model.W_enc_FD, model.b_enc_F).topk(k).values.median())


def time_model(kind: str, d: int, width: int, k: int, batches: list[torch.Tensor], device: torch.device,
               warmup: int) -> dict:
    """Train `kind` on the batches; the median seconds of the steps after `warmup`, and its
    L0 / state L0 on the last batch."""
    if kind == "topk":
        cfg = SAEConfig(d_in=d, width=width, activation=TopK(k=k))
    else:
        cut = CARRY_CUT * typical_innovation(d, width, k, batches[0])
        cfg = ContextualConfig(d_in=d, width=width, activation=TopK(k=k), carry=kind, carry_threshold=cut)
    torch.manual_seed(0)
    model = build_sae(cfg)
    if kind != "topk":
        carrying_(model)
    axis = make_axis("tokens", T)
    positions = batches[0].shape[0] * T
    tc = TrainConfig(tokens=len(batches) * positions, lr=1e-3, carry_warmup_fraction=0.0, k_anneal_fraction=0.0,
                     progress=False, eval_every=0, checkpoint_every=0, log_every=0)
    trainer = Trainer(model, tc, axis, device=device, timed=True)
    trainer.fit(iter(batches))
    seconds = statistics.median(trainer.step_seconds[warmup:])
    with torch.no_grad():
        model.eval()
        out = model(batches[-1].to(device), axis)
        sparsity = {"l0": l0(out.innovations, positions), "state_l0": l0(out.state)}
    del trainer, model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"seconds_per_step": seconds, "tokens_per_s": positions / seconds, **sparsity}


def run_point(d: int, width: int, windows: int, device: torch.device, steps: int, warmup: int,
              attention: bool) -> dict:
    k = min(16, width // 8)
    batches = batches_for(d, windows, steps + warmup)
    row = {"d": d, "width": width, "windows": windows, "k": k,
           "topk": time_model("topk", d, width, k, batches, device, warmup),
           "gated": time_model("gated", d, width, k, batches, device, warmup)}
    if attention:
        row["attention"] = time_model("attention", d, width, k, batches, device, warmup)
    for carry in ("gated", "attention"):
        if carry in row:
            row[carry]["cost_vs_topk"] = row[carry]["seconds_per_step"] / row["topk"]["seconds_per_step"]
            row[carry]["meets_goal"] = row[carry]["cost_vs_topk"] <= GOALS[carry]
    return row


def print_row(r: dict) -> None:
    cells = [f"{r['d']:>5}{r['width']:>7}{r['windows']:>4}", f"{r['topk']['tokens_per_s']:>11,.0f}"]
    for carry in ("gated", "attention"):
        m = r.get(carry)
        cells.append(f"{m['tokens_per_s']:>11,.0f}{m['cost_vs_topk']:>7.2f}x{m['state_l0'] / max(m['l0'], 1e-9):>6.1f}"
                     if m else f"{'-':>25}")
    print("  ".join(cells), flush=True)


def misses(rows: list[dict]) -> dict[str, list[tuple[int, int, int]]]:
    """Per carry, the (d, width, windows) points where it misses its goal."""
    return {c: [(r["d"], r["width"], r["windows"]) for r in rows if c in r and not r[c]["meets_goal"]]
            for c in ("gated", "attention")}


def save(args, device: torch.device, rows: list[dict], complete: bool, start: float) -> None:
    write_json_atomic(args.out, {"device": str(device), "T": T, "goals": GOALS, "carry_gate": CARRY_GATE,
                                 "carry_cut": CARRY_CUT, "steps": args.steps, "warmup": args.warmup,
                                 "quick": args.quick, "complete": complete, "rows": rows, "misses": misses(rows),
                                 "seconds": time.perf_counter() - start, "machine": machine_info(device)})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per model (default: 3; the median is kept)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default: 2)")
    p.add_argument("--no-attention", action="store_true", help="time TopK and the gated carry only")
    p.add_argument("--quick", action="store_true", help="two small points: checks the plumbing, not the goals")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/contextual_cost_cpu.json"))
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    grid = QUICK if args.quick else GRID
    start = time.perf_counter()
    print(f"contextual cost per token on {device} ({torch.get_num_threads()} threads), T = {T}, k = min(16, width/8)")
    print(f"{'d':>5}{'width':>7}{'B':>4}  {'TopK tok/s':>11}  {'gated tok/s':>11}{'cost':>8}{'state/L0':>8}  "
          f"{'attn tok/s':>11}{'cost':>8}{'state/L0':>8}")
    rows: list[dict] = []
    points = list(itertools.product(grid["d"], grid["width"], grid["windows"]))
    for d, width, windows in sorted(points, key=lambda p: p[0] * p[1] * p[2]):  # small shapes first
        rows.append(run_point(d, width, windows, device, args.steps, args.warmup, not args.no_attention))
        print_row(rows[-1])
        save(args, device, rows, len(rows) == len(points), start)  # after every point: a cut-off run keeps its rows
    for carry, missed in misses(rows).items():
        measured = sum(carry in r for r in rows)
        print(f"{carry}: at most {GOALS[carry]}x at {measured - len(missed)} of {measured} points"
              + (f"; misses at (d, width, windows) {missed}" if missed else ""))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
