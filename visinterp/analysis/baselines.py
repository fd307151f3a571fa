"""What an LLM's activations give away without an SAE, beside every sweep: the FVU of predicting
each activation from its token alone (the unigram null: the token's mean activation over the
training windows) and from the previous positions' activations (their mean over the last 1 and
4 positions). An SAE, contextual or not, earns its figures above these."""

from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor

from ctxsae_core.metrics import fvu


class UnigramTable:
    """The mean activation of each token id, accumulated over (ids, activations) batches; ids
    never seen predict the mean of everything seen."""

    def __init__(self) -> None:
        self._parts: list[tuple[Tensor, Tensor, Tensor]] = []  # (ids, sums, counts) per batch

    def add(self, ids: Tensor, acts: Tensor) -> "UnigramTable":
        """ids (...) token ids and acts (..., d) their activations (summed in float64)."""
        ids, acts = ids.reshape(-1).long(), acts.reshape(-1, acts.shape[-1]).double()
        uniq, inverse = ids.unique(return_inverse=True)
        sums = torch.zeros(len(uniq), acts.shape[1], dtype=torch.float64).index_add_(0, inverse, acts)
        self._parts.append((uniq, sums, torch.bincount(inverse, minlength=len(uniq))))
        return self

    def _table(self) -> tuple[Tensor, Tensor, Tensor]:
        """(sorted ids, their mean activations, the overall mean)."""
        if not self._parts:
            raise ValueError("the unigram table is empty: add training activations first")
        ids = torch.cat([p[0] for p in self._parts])
        uniq, inverse = ids.unique(return_inverse=True)
        sums = torch.zeros(len(uniq), self._parts[0][1].shape[1], dtype=torch.float64)
        sums.index_add_(0, inverse, torch.cat([p[1] for p in self._parts]))
        counts = torch.zeros(len(uniq), dtype=torch.float64).index_add_(
            0, inverse, torch.cat([p[2] for p in self._parts]).double())
        self._parts = [(uniq, sums, counts.long())]
        return uniq, sums / counts[:, None], sums.sum(0) / counts.sum()

    def predict(self, ids: Tensor) -> Tensor:
        """(..., d) float32: each id's mean activation (the overall mean for unseen ids)."""
        seen, means, overall = self._table()
        flat = ids.reshape(-1).long()
        at = torch.searchsorted(seen, flat).clamp_max(len(seen) - 1)
        known = seen[at] == flat
        out = torch.where(known[:, None], means[at], overall[None, :])
        return out.float().reshape(*ids.shape, -1)


def unigram_table(batches: Iterable[tuple[Tensor, Tensor]]) -> UnigramTable:
    """A `UnigramTable` of (ids (n, S), activations (n, S, d)) batches, e.g. a store's training windows."""
    table = UnigramTable()
    for ids, acts in batches:
        table.add(ids, acts)
    return table


def previous_mean(x: Tensor, k: int) -> Tensor:
    """(N, S, d) -> (N, S - 1, d): for positions 1..S-1, the mean of the up to k positions before."""
    cum = torch.cat([torch.zeros_like(x[:, :1]), x.cumsum(1)], 1)  # cum[:, t] = sum of x[:, :t]
    t = torch.arange(1, x.shape[1])
    lo = (t - k).clamp_min(0)
    return (cum[:, t] - cum[:, lo]) / (t - lo).to(x.dtype)[None, :, None]


def null_fvus(held_x: Tensor, held_ids: Tensor, table: UnigramTable) -> dict[str, float]:
    """Held-out FVU of the unigram null and of the previous-1 and previous-4 means, all over
    positions 1..S-1 of each window (those with a previous position): held_x (N, S, d) and
    held_ids (N, S) the tokens at those positions."""
    x = held_x[:, 1:]
    return {"unigram": fvu(x, table.predict(held_ids[:, 1:])),
            "previous_1": fvu(x, previous_mean(held_x, 1)),
            "previous_4": fvu(x, previous_mean(held_x, 4))}
