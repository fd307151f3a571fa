"""LLM harvest throughput against a bare forward pass of the same model truncated after the
hook's layer, side by side in one run (goal: at least 0.9x), and the peak memory of harvests
of growing size (bounded by the shard size, not by the corpus size). Prints a table, writes JSON.

    python benchmarks/llm_harvest_throughput.py --out benchmarks/results/llm_harvest_throughput.json

The harvest does everything `visinterp llm-compare` does per batch: the forward pass with the
capture hook (stopping after the hook's layer), position 0 and outlier windows dropped, shards
written with their SHA-256 and the manifest updated. The bare pass runs the transformers base
model with `config.num_hidden_layers = L + 1` (the library's own truncation) under no_grad and
keeps nothing. Memory is measured in a fresh subprocess per corpus size (peak resident set size)."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from ctxsae_common.files import write_json_atomic
from visinterp.inputs.corpus import default_corpus, token_windows
from visinterp.models.causal_lm import load_causal_lm
from visinterp.harvest.tokens import harvest_tokens
import harvest_bench  # benchmarks/harvest_bench.py
from machine import machine_info  # benchmarks/machine.py: run as python benchmarks/<name>.py


def windows_for(lm, n: int, window: int):
    return token_windows(default_corpus(), lambda t: lm.tokenizer(t)["input_ids"], window, n, seed=0, span_tokens=(8, 48))


def bare(lm, ids: torch.Tensor, layer: int, batch: int) -> float:
    """Seconds for the base model truncated after `layer` over the windows, nothing kept."""
    config = lm.model.model.config
    full = config.num_hidden_layers
    config.num_hidden_layers = layer + 1
    try:
        start = time.perf_counter()
        with torch.no_grad():
            for a in range(0, ids.shape[0], batch):
                lm.model.model(ids[a : a + batch], use_cache=False)
        return time.perf_counter() - start
    finally:
        config.num_hidden_layers = full


def harvested(lm, windows, hook: str, batch: int, shard_windows: int = 1024) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        harvest_tokens(lm, windows.ids, hook, Path(tmp) / "store", {}, batch=batch, shard_windows=shard_windows,
                       progress=False)
        return time.perf_counter() - start


def memory_child(n: int, window: int, hook: str, shard_windows: int) -> None:
    """Run in a subprocess: harvest n windows, print peak RSS and store size as JSON."""
    lm = load_causal_lm()
    windows = windows_for(lm, n, window)
    with tempfile.TemporaryDirectory() as tmp:
        harvest_tokens(lm, windows.ids, hook, Path(tmp) / "store", {}, batch=16, shard_windows=shard_windows,
                       progress=False)
        harvest_bench.child_report(Path(tmp) / "store", token_ids_mb=windows.ids.numel() * 8 / 2**20)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hooks", default="resid.15,resid.5,resid.29", help="hooks measured (default: resid.15,resid.5,resid.29)")
    p.add_argument("--windows", type=int, default=128, help="windows per throughput measurement (default: 128)")
    p.add_argument("--window", type=int, default=128, help="tokens per window (default: 128)")
    p.add_argument("--batch", type=int, default=16, help="windows per forward pass (default: 16)")
    p.add_argument("--repeats", type=int, default=3, help="alternating repeats; medians are reported (default: 3)")
    p.add_argument("--memory-sizes", default="256,1024,2048", help="windows per memory measurement")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/llm_harvest_throughput.json"))
    p.add_argument("--memory-child", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.memory_child:
        n, window, hook, shard = args.memory_child
        memory_child(int(n), int(window), hook, int(shard))
        return 0
    lm = load_causal_lm()
    windows = windows_for(lm, args.windows, args.window)
    bare(lm, windows.ids[: args.batch], lm.n_layers - 1, args.batch)  # warm-up
    rows = {}
    for hook in args.hooks.split(","):
        layer = int(hook.split(".")[1])
        rows[hook] = harvest_bench.side_by_side(lambda: bare(lm, windows.ids, layer, args.batch),
                                                lambda: harvested(lm, windows, hook, args.batch), args.repeats,
                                                windows.ids.numel(),
                                                "tokens")
    memory = harvest_bench.measure(__file__, [int(v) for v in args.memory_sizes.split(",")],
                                 lambda n: [n, args.window, "resid.15", 128])
    print(f"{lm.description}: harvest vs bare forward truncated after the hook's layer "
          f"(T = {args.window}, batch {args.batch}, {torch.get_num_threads()} threads, median of {args.repeats})")
    print(f"{'hook':<10}{'tokens':>8}{'bare tok/s':>12}{'harvest tok/s':>15}{'ratio':>7}")
    for hook, r in rows.items():
        print(f"{hook:<10}{r['tokens']:>8}{r['bare_tokens_per_s']:>12.0f}{r['harvest_tokens_per_s']:>15.0f}{r['ratio']:>7.3f}")
    print(f"\npeak memory of a resid.15 harvest (T = {args.window}, 128-window shards)")
    harvest_bench.print_table(memory, "windows")
    write_json_atomic(args.out, {"model": lm.description, "window": args.window, "batch": args.batch,
                                 "repeats": args.repeats, "throughput": rows, "memory": memory, "machine": machine_info()})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
