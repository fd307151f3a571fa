"""Groups of features that fire together: the Jaccard overlap of where features are active,
and the groups it links (a first step from single unnamed features to what they make up)."""

from __future__ import annotations

import torch
from torch import Tensor


def coactivation(state: Tensor, features: list[int]) -> Tensor:
    """Jaccard overlap (k, k) of where the features are active: |A n B| / |A u B| over positions
    of state codes (..., F); 1 on the diagonal of a live feature."""
    active = (state.reshape(-1, state.shape[-1])[:, features] > 0).float()
    both = active.T @ active
    count = active.sum(0)
    union = count[:, None] + count[None, :] - both
    return torch.where(union > 0, both / union.clamp(min=1), torch.zeros_like(both))


def coactivation_groups(jaccard: Tensor, features: list[int], threshold: float = 0.3) -> list[list[int]]:
    """Connected groups of features whose pairwise Jaccard overlap reaches `threshold` (single
    linkage), largest first; features that join no one are singletons."""
    parent = list(range(len(features)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in (jaccard >= threshold).nonzero().tolist():
        if i < j:
            parent[root(i)] = root(j)
    groups: dict[int, list[int]] = {}
    for i, f in enumerate(features):
        groups.setdefault(root(i), []).append(f)
    return sorted(groups.values(), key=lambda g: (-len(g), g[0]))
