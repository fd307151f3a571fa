"""Training throughput, side by side in one run on the same activations:

1. our per-position TopK SAE against SAELens's TopK SAE (its own `SAETrainer`), at the same
   d, width, k, batch, learning-rate schedule and token count, with the held-out FVU each
   reaches (goal: ours >= 2x SAELens's tokens/s at no worse FVU);
2. the contextual SAE's training cost per token against our per-position TopK, at the same
   width and k (goal: <= 2x); the gated carry trains on the same token count as TopK, the
   attention carry on fewer (--attention-tokens).

Each model trains in a fresh process, one after another, reading the same activations from a
temporary file: run in one process, each run paid for the ones before it (after SAELens's run
the gated contextual SAE trained 30% slower, 5,535 against 7,175 tokens/s), and the first run
paid for torch.optim's one-off imports (about 1 s). Each process also takes one Adam step on a
tiny model before its timed run, for those imports.

Needs SAELens (`make bench-throughput` installs it in .venv-bench); without it, --skip-saelens
runs part 2 alone. Activations are synthetic (`ctxsae_core.synthetic`), so no model is needed.

    python benchmarks/train_throughput.py --out benchmarks/results/train_throughput.json
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ctxsae_common.files import write_json_atomic
from ctxsae_core import BatchTopK, ContextualConfig, SAEConfig, TopK, TrainConfig, make_axis
from ctxsae_core.data import WindowBatches
from ctxsae_core.evaluate import evaluate
from ctxsae_core.metrics import fvu
from ctxsae_core.sweep import train_sae
from ctxsae_core.synthetic import RegionsData, RegionsSpec
from ctxsae_core.trainer import default_lr
from machine import cpu_model, machine_info  # benchmarks/machine.py: run as python benchmarks/<name>.py

GOALS = {"min_speedup_vs_saelens": 2.0, "max_contextual_cost_ratio": 2.0}


def make_data(args) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows [N, T, d] of sparse synthetic activations: ~40 active features of ~4,500."""
    spec = RegionsSpec(d=args.d, n_groups=24, values_per_group=16, n_local=4096, local_per_position=16)
    data = RegionsData(spec, args.T, seed=0)
    n_train = -(-args.tokens // args.T)
    chunks = [data.windows(min(256, n_train - i), seed=100 + i).x for i in range(0, n_train, 256)]
    return torch.cat(chunks), data.windows(args.heldout_windows, seed=1).x


def isolated(run, args, data_path: Path, *extra):
    """`run(args, train, held, *extra)` in a fresh process (spawned: nothing inherited)."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_in_child, run, args, data_path, *extra).result()


def _in_child(run, args, data_path: Path, *extra):
    data = load_file(data_path)
    torch.optim.Adam(torch.nn.Linear(2, 2).parameters()).step()  # torch.optim's one-off imports, untimed
    return run(args, data["train"], data["held"], *extra)


def train_config(args, tokens: int, **overrides) -> TrainConfig:
    return TrainConfig(tokens=tokens, lr=args.lr, progress=False, eval_every=0, checkpoint_every=0, log_every=0,
                       **overrides)


def run_ours(args, train, held) -> dict:
    batches = WindowBatches(train, args.batch // args.T, seed=0)
    start = time.perf_counter()
    model = train_sae(SAEConfig(d_in=args.d, width=args.width, activation=TopK(k=args.k)),
                      train_config(args, args.tokens), batches, None).model
    seconds = time.perf_counter() - start
    return {"tokens_per_s": args.tokens / seconds, "seconds": seconds,
            "heldout_fvu": evaluate(model, held, None)["fvu"]}


def run_saelens(args, train, held) -> dict:
    import sae_lens
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    torch.manual_seed(0)
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=args.d, d_sae=args.width, k=args.k, device="cpu"))
    steps = args.tokens // args.batch
    cfg = SAETrainerConfig(total_training_samples=args.tokens, train_batch_size_samples=args.batch, lr=args.lr, lr_end=0.0,
                           lr_warm_up_steps=round(0.05 * steps), lr_decay_steps=round(0.2 * steps), device="cpu",
                           logger=LoggingConfig(log_to_wandb=False))
    batches = (b.reshape(-1, args.d) for b in WindowBatches(train, args.batch // args.T, seed=0))
    start = time.perf_counter()
    SAETrainer(cfg, sae, batches).fit()
    seconds = time.perf_counter() - start
    with torch.no_grad():
        x = held.reshape(-1, args.d)
        heldout = fvu(x, sae(x))
    return {"tokens_per_s": args.tokens / seconds, "seconds": seconds, "heldout_fvu": heldout,
            "version": sae_lens.__version__}


def run_contextual(args, train, held, carry: str) -> dict:
    tokens = args.tokens if carry == "gated" else args.attention_tokens
    batches = WindowBatches(train, args.batch // args.T, seed=0)
    start = time.perf_counter()  # carry on from the first step: the cost of the full model
    train_sae(ContextualConfig(d_in=args.d, width=args.width, activation=BatchTopK(k=args.k), carry=carry),
              train_config(args, tokens, carry_warmup_fraction=0.0, k_anneal_fraction=0.0), batches,
              make_axis("tokens", args.T))
    seconds = time.perf_counter() - start
    return {"tokens_per_s": tokens / seconds, "seconds": seconds, "tokens": tokens}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--d", type=int, default=576, help="activation width (SmolLM2-135M's residual: 576)")
    p.add_argument("--width", type=int, default=4608, help="dictionary features")
    p.add_argument("--k", type=int, default=32, help="active features per position")
    p.add_argument("--batch", type=int, default=4096, help="positions per step")
    p.add_argument("--T", type=int, default=64, help="window length")
    p.add_argument("--tokens", type=int, default=100 * 4096, help="training positions per per-position run")
    p.add_argument("--attention-tokens", type=int, default=20 * 4096,
                   help="training positions of the attention-carry run (the gated carry's: --tokens, like TopK's); "
                        "fewer, as it trains about 15x slower, so its one-off set-up weighs 5x more per token")
    p.add_argument("--heldout-windows", type=int, default=64)
    p.add_argument("--lr", type=float, default=None, help="learning rate for both (default: ours, by width)")
    p.add_argument("--skip-saelens", action="store_true", help="measure the contextual cost ratio only")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/train_throughput.json"))
    args = p.parse_args(argv)
    args.lr = args.lr or default_lr(args.width)
    print(f"generating {args.tokens:,} positions of d={args.d} activations...", flush=True)
    train, held = make_data(args)
    results: dict = {"setup": {k: v for k, v in vars(args).items() if k != "out"}, "goals": GOALS,
                     "machine": machine_info()}
    with tempfile.TemporaryDirectory() as tmp:
        data_path = Path(tmp) / "activations.safetensors"
        save_file({"train": train, "held": held}, data_path)
        del train, held
        print("training ours (per-position TopK)...", flush=True)
        results["ours_topk"] = isolated(run_ours, args, data_path)
        if not args.skip_saelens:
            print("training SAELens TopK...", flush=True)
            results["saelens_topk"] = isolated(run_saelens, args, data_path)
            results["speedup_vs_saelens"] = results["ours_topk"]["tokens_per_s"] / results["saelens_topk"]["tokens_per_s"]
        for carry in ("gated", "attention"):
            print(f"training contextual ({carry} carry)...", flush=True)
            r = isolated(run_contextual, args, data_path, carry)
            r["cost_per_token_vs_topk"] = results["ours_topk"]["tokens_per_s"] / r["tokens_per_s"]
            results[f"contextual_{carry}"] = r

    print(f"\ntraining throughput: d={args.d}, width={args.width}, k={args.k}, batch={args.batch}, "
          f"{torch.get_num_threads()} threads, {cpu_model()}")
    print(f"{'model':<34}{'tokens/s':>10}{'held-out FVU':>14}{'cost/token':>12}")
    rows = [("ours: per-position TopK", results["ours_topk"])]
    if "saelens_topk" in results:
        rows.append((f"SAELens {results['saelens_topk']['version']} TopK", results["saelens_topk"]))
    rows += [(f"ours: contextual, {c} carry", results[f"contextual_{c}"]) for c in ("gated", "attention")]
    for name, r in rows:
        cost = r.get("cost_per_token_vs_topk", results["ours_topk"]["tokens_per_s"] / r["tokens_per_s"])
        fvu_txt = f"{r['heldout_fvu']:.4f}" if "heldout_fvu" in r else "-"
        print(f"{name:<34}{r['tokens_per_s']:>10,.0f}{fvu_txt:>14}{cost:>11.2f}x")
    if "speedup_vs_saelens" in results:
        s = results["speedup_vs_saelens"]
        no_worse = results["ours_topk"]["heldout_fvu"] <= results["saelens_topk"]["heldout_fvu"] * 1.01
        print(f"ours vs SAELens: {s:.2f}x tokens/s (goal >= {GOALS['min_speedup_vs_saelens']}), held-out FVU "
              f"{'no worse' if no_worse else 'WORSE'}")
    for c in ("gated", "attention"):
        ratio = results[f"contextual_{c}"]["cost_per_token_vs_topk"]
        print(f"contextual ({c}) cost per token: {ratio:.2f}x per-position TopK (goal <= {GOALS['max_contextual_cost_ratio']})")
    write_json_atomic(args.out, results)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
