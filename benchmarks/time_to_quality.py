"""Time to quality: the wall time each trainer needs to reach a held-out FVU, measured on models
trained until converged, not speed at step 100.

On the same activations (d 576, width 4608, k 32 by default: synthetic windows with ~40 true
features active of ~4,500, `ctxsae_core.synthetic`), it trains:

1. our per-position TopK, and SAELens's TopK with its own trainer (`SAETrainer`), with the same
   batch, warm-up and decay;
2. our contextual SAE (gated carry, BatchTopK innovations at the same k).

Each model's learning rate is chosen by a sweep at its full budget (`--lr`, `--saelens-lr`,
`--contextual-lr` each take a comma-separated list; `default` is the trainer's own rate): of the
runs that converged, the one with the lowest final FVU is the model compared, and every run of
the sweep is recorded. (SAELens does not normalise activations by default, so the two TopKs'
best rates differ; neither rate is set by hand.)

Each model has its own budget of training positions (`--tokens`, `--saelens-tokens`,
`--contextual-tokens`; epochs reuse `--data-tokens` distinct positions), set large enough for the
swept rates to converge. Every model is evaluated on
held-out windows at fixed token counts, with the evaluation's time
left off the clock (the evaluation runs when the trainer asks for its next batch, so SAELens's
trainer is timed as it is). A model has converged when its held-out FVU changed by less than 2%
over the last quarter of its tokens (the trainer's rule: one that rose has not converged). For
each pair, the target is the worse of the two final FVUs, and the time to quality is when each
curve first reaches it (interpolated between evaluations). Goals: ours at most 0.5x SAELens's
time at no worse converged FVU; the contextual SAE at most 2x our TopK's time.

    python benchmarks/time_to_quality.py --out benchmarks/results/time_to_quality_cpu.json   # SAELens from .venv-bench
    python benchmarks/time_to_quality.py --saelens-lr default --saelens-tokens 20000000   # SAELens at its own rate
    python benchmarks/time_to_quality.py --device cuda --out benchmarks/results/time_to_quality_cuda.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import torch

from ctxsae_common.device import resolve_device
from ctxsae_common.files import read_json, write_json_atomic
from ctxsae_core import BatchTopK, ContextualConfig, SAEConfig, TopK, TrainConfig, make_axis
from ctxsae_core.checkpoint import build_sae
from ctxsae_core.data import WindowBatches
from ctxsae_core.metrics import ReconstructionSums
from ctxsae_core.synthetic import RegionsData, RegionsSpec
from ctxsae_core.trainer import CONVERGED_GAIN, Trainer, convergence
from scenes.figures import pyplot, save_figure
from machine import machine_info  # benchmarks/machine.py: run as python benchmarks/<name>.py
from rates import lowest_converged, parse_rates

GOALS = {"max_time_vs_saelens": 0.5, "max_contextual_time_vs_topk": 2.0, "converged_gain": CONVERGED_GAIN}


def make_data(args) -> tuple[torch.Tensor, torch.Tensor]:
    """Training windows [N, T, d] (a pass is args.data_tokens positions) and held-out windows."""
    spec = RegionsSpec(d=args.d, n_groups=24, values_per_group=16, n_local=4096, local_per_position=16)
    data = RegionsData(spec, args.T, seed=0)
    n = -(-args.data_tokens // args.T)
    train = torch.cat([data.windows(min(256, n - i), seed=100 + i).x for i in range(0, n, 256)])
    return train, data.windows(args.heldout_windows, seed=1).x


class Curve:
    """Held-out FVU against training tokens and training seconds (evaluation time excluded)."""

    def __init__(self, held: torch.Tensor, forward: Callable[[torch.Tensor], torch.Tensor], device: torch.device,
                 every_tokens: int, batch_tokens: int):
        self.held, self.forward, self.device = held, forward, device
        self.every, self.batch_tokens = every_tokens, batch_tokens
        self.points: list[dict] = []
        self.tokens, self.eval_seconds, self.start = 0, 0.0, None

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @torch.no_grad()
    def evaluate(self) -> None:
        self.sync()
        t0 = time.perf_counter()
        sums = ReconstructionSums()
        for i in range(0, self.held.shape[0], 64):
            x = self.held[i : i + 64].to(self.device)
            sums.add(x, self.forward(x))
        fvu = sums.fvu
        self.points.append({"tokens": self.tokens, "seconds": t0 - self.start - self.eval_seconds, "fvu": fvu})
        self.eval_seconds += time.perf_counter() - t0

    def wrap(self, batches: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
        """The batches, evaluating every `every` tokens when the trainer asks for the next one."""
        self.start = time.perf_counter()
        for batch in batches:
            if self.tokens and self.tokens % self.every < self.batch_tokens:
                self.evaluate()
            self.tokens += self.batch_tokens
            yield batch

    def finish(self) -> dict:
        """The curve, its end, and whether it converged by the trainer's rule (`convergence`: an FVU that
        rose over the last quarter has not converged either)."""
        self.evaluate()
        judged = convergence(self.points, self.tokens)
        return {"curve": self.points, "final_fvu": self.points[-1]["fvu"], "train_seconds": self.points[-1]["seconds"],
                "gain_over_last_quarter": judged["fvu_gain_last_quarter"], "converged": judged["converged"]}


def time_to(curve: list[dict], target: float, from_tokens: int = 0) -> float | None:
    """Seconds at which the curve first reaches FVU <= target (linear between evaluations),
    counting only points from `from_tokens` on: before it, a model whose budget anneals codes
    with more than k features a position, so its FVU there is not at the same sparsity."""
    curve = [p for p in curve if p["tokens"] >= from_tokens]
    if curve and curve[0]["fvu"] <= target:
        return curve[0]["seconds"]
    for a, b in zip(curve, curve[1:]):
        if b["fvu"] <= target:
            if a["fvu"] <= target:
                return a["seconds"]
            w = (a["fvu"] - target) / (a["fvu"] - b["fvu"])
            return a["seconds"] + w * (b["seconds"] - a["seconds"])
    return None


def schedule(args, tokens: int) -> dict:
    """Steps, warm-up and decay steps of SAELens's run: our recipe's fractions (TrainConfig)."""
    steps, recipe = tokens // args.batch, TrainConfig()
    return {"steps": steps, "warmup": round(recipe.warmup_fraction * steps), "decay": round(recipe.decay_fraction * steps)}


def run_ours(args, train, held, device, arch: str, tokens: int, lr: float | None) -> dict:
    if arch == "topk":
        cfg = SAEConfig(d_in=args.d, width=args.width, activation=TopK(k=args.k))
        axis = None
    else:
        cfg = ContextualConfig(d_in=args.d, width=args.width, activation=BatchTopK(k=args.k), carry="gated")
        axis = make_axis("tokens", args.T)
    torch.manual_seed(0)
    model = build_sae(cfg)
    tc = TrainConfig(tokens=tokens, lr=lr, progress=False, eval_every=0, checkpoint_every=0,
                     log_every=0)
    trainer = Trainer(model, tc, axis, device=device, dtype=args.dtype)

    def forward(x: torch.Tensor) -> torch.Tensor:  # the model as it stands, in inference mode
        model.eval()
        out = model(x, axis).x_hat
        model.train()
        return out

    curve = Curve(held, forward, device, args.eval_every, args.batch)
    trainer.fit(curve.wrap(iter(WindowBatches(train, args.batch // args.T, seed=0))))
    return {"lr": trainer.lr, "at_k_from_tokens": trainer.tokens_at_full_budget, "clipped_steps": trainer.clipped_steps,
            **curve.finish()}


def run_saelens(args, train, held, device, tokens: int, lr: float | None) -> dict:
    import sae_lens
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    torch.manual_seed(0)
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=args.d, d_sae=args.width, k=args.k, device=str(device)))
    s = schedule(args, tokens)
    kwargs = {} if lr is None else {"lr": lr}
    cfg = SAETrainerConfig(total_training_samples=tokens, train_batch_size_samples=args.batch, lr_end=0.0,
                           lr_warm_up_steps=s["warmup"], lr_decay_steps=s["decay"], device=str(device),
                           logger=LoggingConfig(log_to_wandb=False), **kwargs)
    curve = Curve(held, lambda x: sae(x.reshape(-1, args.d)).reshape(x.shape), device, args.eval_every, args.batch)
    batches = (b.reshape(-1, args.d).to(device) for b in WindowBatches(train, args.batch // args.T, seed=0))
    SAETrainer(cfg, sae, curve.wrap(batches)).fit()
    return {"version": sae_lens.__version__, "lr": cfg.lr, **curve.finish()}


def compare(a: dict, b: dict) -> dict:
    """Time for each to reach the worse of the two final FVUs, and their ratio a / b."""
    target = max(a["final_fvu"], b["final_fvu"])
    ta = time_to(a["curve"], target, a.get("at_k_from_tokens", 0))
    tb = time_to(b["curve"], target, b.get("at_k_from_tokens", 0))
    return {"target_fvu": target, "seconds": [ta, tb], "ratio": ta / tb if ta and tb else None}


LABELS = {"ours_topk": "ours: per-position TopK", "saelens_topk": "SAELens TopK",
          "contextual_gated": "ours: contextual, gated carry"}


def plot(results: dict, path: Path) -> None:
    """Held-out FVU against training seconds, one curve per compared model (the sweep's choice),
    the target of each comparison as a dotted line."""
    fig, ax = pyplot().subplots(figsize=(7.5, 4))
    for key, label in LABELS.items():
        if key in results:
            m = results[key]
            line, = ax.plot([p["seconds"] for p in m["curve"]], [p["fvu"] for p in m["curve"]], marker=".",
                            label=f"{label} (lr {m['lr']:.3g})")
            at_k = [p["seconds"] for p in m["curve"] if p["tokens"] >= m.get("at_k_from_tokens", 0)]
            if m.get("at_k_from_tokens") and at_k:
                ax.axvline(at_k[0], color=line.get_color(), lw=0.8, ls="--", label="its budget reaches k")
    for key in ("ours_vs_saelens", "contextual_vs_topk"):
        if key in results:
            ax.axhline(results[key]["target_fvu"], color="grey", lw=0.8, ls=":",
                       label="target FVU" if key == "ours_vs_saelens" else None)
    ax.set_xlabel("training seconds (evaluation off the clock)")
    ax.set_ylabel("held-out FVU")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    where = results["machine"].get("gpu") or f"{results['machine']['cpu']}, {results['machine']['threads']} threads"
    ax.set_title(f"time to quality: {where}", fontsize=10)
    save_figure(fig, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    p.add_argument("--dtype", default="float32", help="float32, or bfloat16 autocast on CUDA (ours)")
    p.add_argument("--d", type=int, default=576)
    p.add_argument("--width", type=int, default=4608)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--T", type=int, default=64)
    p.add_argument("--batch", type=int, default=4096, help="positions per step")
    p.add_argument("--tokens", type=int, default=3_000_000, help="training positions of our TopK (and of the others, "
                   "unless set below)")
    p.add_argument("--saelens-tokens", type=int, default=None, help="SAELens's training positions (default: --tokens)")
    p.add_argument("--contextual-tokens", type=int, default=4_000_000,
                   help="the contextual SAE's training positions (it anneals its budget over the first half)")
    p.add_argument("--data-tokens", type=int, default=1_500_000, help="distinct training positions (epochs reuse them)")
    p.add_argument("--heldout-windows", type=int, default=64)
    p.add_argument("--eval-every", type=int, default=250_000, help="tokens between held-out evaluations")
    p.add_argument("--lr", type=parse_rates, default="1e-3,2e-3,default", metavar="RATES",
                   help="our TopK's learning rates to sweep, comma-separated ('default': ours by width)")
    p.add_argument("--saelens-lr", type=parse_rates, default="1e-3,3e-3", metavar="RATES",
                   help="SAELens's learning rates to sweep ('default': its own, 3e-4 in SAELens 6.54)")
    p.add_argument("--contextual-lr", type=parse_rates, default="1e-3,2e-3", metavar="RATES",
                   help="the contextual SAE's learning rates to sweep")
    p.add_argument("--skip-saelens", action="store_true")
    p.add_argument("--skip-contextual", action="store_true")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/time_to_quality_cpu.json"),
                   help="result JSON; the learning curves' plot goes beside it (.png)")
    p.add_argument("--replot", type=Path, default=None, metavar="JSON",
                   help="draw the plot of an earlier result beside it, without training")
    args = p.parse_args(argv)
    if args.replot is not None:
        plot(read_json(args.replot), args.replot.with_suffix(".png"))
        print(f"wrote {args.replot.with_suffix('.png')}")
        return 0
    device = resolve_device(args.device)
    start = time.perf_counter()
    train, held = make_data(args)
    epoch = train.shape[0] * args.T
    budget = {"ours_topk": args.tokens, "saelens_topk": args.saelens_tokens or args.tokens,
              "contextual_gated": args.contextual_tokens or args.tokens}
    print(f"time to quality on {device}: d {args.d}, width {args.width}, k {args.k}, batch {args.batch}, "
          f"epochs of {epoch:,} positions; training positions: "
          + ", ".join(f"{name} {tokens:,}" for name, tokens in budget.items()), flush=True)
    setup = {**{k: v for k, v in vars(args).items() if k != "out"}, "carry_coeff": ContextualConfig.carry_coeff}
    results: dict = {"setup": setup, "goals": GOALS,
                     "epochs": args.tokens / epoch}
    runs: dict[str, tuple[list, Callable[[float | None], dict]]] = {
        "ours_topk": (args.lr, lambda lr: run_ours(args, train, held, device, "topk", budget["ours_topk"], lr))}
    if not args.skip_saelens:
        runs["saelens_topk"] = (args.saelens_lr,
                                lambda lr: run_saelens(args, train, held, device, budget["saelens_topk"], lr))
    if not args.skip_contextual:
        runs["contextual_gated"] = (args.contextual_lr, lambda lr: run_ours(args, train, held, device, "contextual",
                                                                            budget["contextual_gated"], lr))
    for name, (rates, run) in runs.items():
        sweep = []
        for lr in rates:
            print(f"training {name} at lr {'default' if lr is None else f'{lr:g}'}...", flush=True)
            r = {**run(lr), "tokens": budget[name], "epochs": budget[name] / epoch}
            sweep.append(r)
            print(f"  lr {r['lr']:.3g}: final held-out FVU {r['final_fvu']:.4f} after {r['train_seconds']:.0f} s; "
                  f"{'converged' if r['converged'] else 'NOT converged'} "
                  f"(last quarter gained {r['gain_over_last_quarter']:.1%})", flush=True)
        results[name] = lowest_converged(sweep, "final_fvu")
        results[name + "_sweep"] = [{k: v for k, v in r.items() if k != "curve"} for r in sweep]
        if len(sweep) > 1:
            print(f"  {name}: lr {results[name]['lr']:.3g} chosen", flush=True)
    if "saelens_topk" in results:
        results["ours_vs_saelens"] = compare(results["ours_topk"], results["saelens_topk"])
    if "contextual_gated" in results:
        results["contextual_vs_topk"] = compare(results["contextual_gated"], results["ours_topk"])
    for key, goal in (("ours_vs_saelens", GOALS["max_time_vs_saelens"]),
                      ("contextual_vs_topk", GOALS["max_contextual_time_vs_topk"])):
        if key in results:
            c = results[key]
            ratio = "-" if c["ratio"] is None else f"{c['ratio']:.2f}x"
            print(f"{key}: time to FVU {c['target_fvu']:.4f}: {ratio} (goal <= {goal}x)")
    results["seconds"] = time.perf_counter() - start
    results["machine"] = machine_info(device)
    write_json_atomic(args.out, results)
    plot(results, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and its plot")
    return 0


if __name__ == "__main__":
    sys.exit(main())
