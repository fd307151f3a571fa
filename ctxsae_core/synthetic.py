"""Synthetic windows with known features, some persisting over regions, others drawn fresh
at every position, so the true number of new features per position is known exactly.

Each window position holds one value of each of `n_groups` region factors (think: language,
topic, object) and `local_per_position` local features. A group keeps its value, and the
value's magnitude, over a region and switches to another value with probability
1 / mean_region_length per position. Every active feature adds magnitude * direction; the
directions are random unit vectors (the true dictionary)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ctxsae_common.seeds import seeded_generator


@dataclass(frozen=True)
class RegionsSpec:
    """The generator's settings: width, region groups and their values, local features, magnitudes, noise."""

    d: int = 128  # activation width
    n_groups: int = 16  # region factors; each position holds one value of every group
    values_per_group: int = 8
    mean_region_length: float = 16.0  # a group switches value with probability 1/this per position
    n_local: int = 128  # per-position features
    local_per_position: int = 4
    magnitude: tuple[float, float] = (0.5, 1.5)  # uniform range of feature magnitudes
    noise: float = 0.01  # std of isotropic Gaussian noise per dimension

    @property
    def n_features(self) -> int:
        """Features in the true dictionary: every group's values, then the local ones."""
        return self.n_groups * self.values_per_group + self.n_local

    def true_rate(self, T: int) -> float:
        """Expected new features per position: every local one, plus every group at a window's
        first position and at each switch."""
        switches = self.n_groups * (1 + (T - 1) / self.mean_region_length) / T
        return self.local_per_position + switches


class RegionWindows(NamedTuple):
    """A drawn set of windows with its truth."""

    x: Tensor  # (N, T, d)
    new_features: Tensor  # (N, T) true number of features that start at each position
    regions: Tensor  # (N, T, n_groups) value index of each group at each position


class RegionsData:
    """A seeded source of synthetic windows: `dictionary` is the truth; `windows(n, seed)`
    draws a fixed set; `iter_from(step)` streams fresh training batches (for the trainer)."""

    def __init__(self, spec: RegionsSpec, T: int, seed: int = 0, batch_windows: int = 64):
        self.spec, self.T, self.seed, self.batch_windows = spec, T, seed, batch_windows
        g = seeded_generator(seed, "data", 0)
        dictionary = torch.randn(spec.n_features, spec.d, generator=g)
        self.dictionary = dictionary / dictionary.norm(dim=1, keepdim=True)  # (n_features, d)

    def windows(self, n: int, seed: int) -> RegionWindows:
        """A fixed set of n windows drawn from stream `seed` (held-out data)."""
        return self._draw(n, seeded_generator(self.seed, "data", 1, seed))

    def iter_from(self, step: int) -> Iterator[Tensor]:
        """Fresh training batches from `step` on, endless; each step's batch is determined by it."""
        while True:
            yield self._draw(self.batch_windows, seeded_generator(self.seed, "data", 2, step)).x
            step += 1

    def __iter__(self) -> Iterator[Tensor]:
        return self.iter_from(0)

    def _uniform(self, shape: tuple[int, ...], g: torch.Generator) -> Tensor:
        lo, hi = self.spec.magnitude
        return lo + (hi - lo) * torch.rand(shape, generator=g)

    def _draw(self, n: int, g: torch.Generator) -> RegionWindows:
        s, T = self.spec, self.T
        G, V = s.n_groups, s.values_per_group
        switch = torch.rand(n, G, T, generator=g) < 1 / s.mean_region_length
        switch[:, :, 0] = True  # every group starts at the window's first position
        step = torch.randint(1, V, (n, G, T), generator=g) * switch  # a switch moves to another value
        values = (torch.randint(0, V, (n, G, 1), generator=g) + step.cumsum(-1)) % V  # (n, G, T)
        starts = (switch * torch.arange(T)).cummax(-1).values  # position where each region began
        magnitude = self._uniform((n, G, T), g).gather(-1, starts)  # constant over a region
        feature = torch.arange(G)[None, :, None] * V + values  # (n, G, T) dictionary index
        local = torch.rand(n, T, s.n_local, generator=g).topk(s.local_per_position, dim=-1).indices
        local_mag = self._uniform((n, T, s.local_per_position), g)
        # every position's active features and magnitudes: (n, T, G + L), summed over their rows
        # of the dictionary without materialising (n, T, G + L, d)
        index = torch.cat([feature.transpose(1, 2), G * V + local], -1)
        weight = torch.cat([magnitude.transpose(1, 2), local_mag], -1)
        x = F.embedding_bag(index.reshape(n * T, -1), self.dictionary, mode="sum",
                            per_sample_weights=weight.reshape(n * T, -1)).reshape(n, T, s.d)
        x = x + s.noise * torch.randn(x.shape, generator=g)
        new = switch.sum(1) + s.local_per_position  # (n, T)
        return RegionWindows(x, new, values.transpose(1, 2))


def dictionary_recovery(true_FD: Tensor, learned_FD: Tensor) -> float:
    """Mean over true features of the best cosine similarity with any learned decoder row."""
    a = true_FD / true_FD.norm(dim=1, keepdim=True)
    b = learned_FD / learned_FD.norm(dim=1, keepdim=True).clamp_min(1e-8)
    return float((a @ b.T).max(dim=1).values.mean())
