"""Harvesting token windows: a causal LM's activations at one hook over token windows, into an
activation store, resumable where it stopped. Position 0 of every window (the attention sink,
~100x the norm of the rest) is left out, and so are windows holding a massive activation."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ctxsae_core.distributed import group
from ctxsae_core.store import ActivationStore, StoreWriter, finished, merge_rank_stores, rank_folder, rank_items
from visinterp.models.causal_lm import CausalLM


def harvest_tokens(lm: CausalLM, ids: Tensor, hook: str, folder: Path, identity: dict, *, batch: int = 16,
                   shard_windows: int = 1024, outlier_norm: float = 10.0, progress: bool = True) -> ActivationStore:
    """Activations at `hook` for positions 1..T-1 of each window of token ids (N, T) into a
    store at `folder`; each stored window's item index is its row of `ids`. Windows holding a
    position whose norm exceeds `outlier_norm` times the batch's median norm are left out. Under
    torchrun each rank harvests its own run of batches (the same batches as one process, so the
    same windows are left out) and the stores are merged at the end."""
    g, n, identity = group(), ids.shape[0], {**identity, "hook": hook, "axis": "tokens"}
    if not finished(folder, n, identity):
        lo, hi = rank_items(n, batch, g.world, g.rank)
        writer = StoreWriter(rank_folder(folder), identity, shard_windows)
        for a in tqdm(range(lo + writer.done_items, hi, batch), desc=f"harvest {hook}", unit="batch",
                      disable=not progress or not g.is_main):
            rows = ids[a : min(a + batch, hi)]
            acts = lm.capture(rows, [hook])[hook][:, 1:]  # position 0 (the attention sink) is left out
            norms = acts.norm(dim=-1)
            keep = ~(norms > outlier_norm * norms.median()).any(1)
            writer.add(acts[keep], torch.arange(a, a + rows.shape[0])[keep], rows.shape[0])
        writer.grid = (1, ids.shape[1] - 1)
        writer.flush()
        merge_rank_stores(folder, n)
    return ActivationStore(folder, verify=True)
