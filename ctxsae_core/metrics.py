"""Metrics shared by every report, each defined once with its formula.

Reconstruction and sparsity metrics are computed from running sums, so a held-out set of any
size streams through `ReconstructionSums` / `SparsitySums`; the tensor helpers (`fvu`, `mse`,
`l0`) are the same formulas on one batch."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class ReconstructionSums:
    """Sufficient statistics of x (positions, d) against x_hat, accumulated in float64."""

    n: int = 0  # positions
    d: int = 0
    sse: float = 0.0  # sum ||x - x_hat||^2
    sum_sq: float = 0.0  # sum ||x||^2
    sum_x: Tensor | None = None  # (d,) sum of x

    def add(self, x: Tensor, x_hat: Tensor) -> "ReconstructionSums":
        """Add a batch of activations x and their reconstruction x_hat, both (..., d)."""
        x, x_hat = x.detach(), x_hat.detach()  # sums of numbers, not part of any graph
        x64, err = x.reshape(-1, x.shape[-1]).double(), (x - x_hat).reshape(-1, x.shape[-1]).double()
        self.n += x64.shape[0]
        self.d = x64.shape[1]
        self.sse += float(err.pow(2).sum())
        self.sum_sq += float(x64.pow(2).sum())
        s = x64.sum(0)
        self.sum_x = s if self.sum_x is None else self.sum_x + s
        return self

    @property
    def fvu(self) -> float:
        """FVU = sum ||x - x_hat||^2 / sum ||x - mean(x)||^2, the mean taken per dimension over
        the same set (so predicting the mean scores 1, a perfect reconstruction 0)."""
        total = self.sum_sq - float(self.sum_x.pow(2).sum()) / self.n
        return self.sse / total if total > 0 else float("nan")

    @property
    def mse(self) -> float:
        """MSE = sum ||x - x_hat||^2 / (positions * d): the mean squared error per element, raw units."""
        return self.sse / (self.n * self.d)


@dataclass
class SparsitySums:
    """Counts of innovations (paid for) and state entries (used by the decoder)."""

    width: int
    positions: int = 0
    innovations: int = 0
    state: int = 0
    fired: Tensor = field(init=False)  # (F,) bool: fired anywhere

    def __post_init__(self) -> None:
        self.fired = torch.zeros(self.width, dtype=torch.bool)

    def add(self, innovations: Tensor, state: Tensor, positions: int) -> "SparsitySums":
        """innovations (B, S, F) over every step walked (pooled cells included, they are paid
        for), state (B, T, F) at the input positions, `positions` = B * T."""
        self.positions += positions
        self.innovations += int((innovations != 0).sum())
        self.state += int((state != 0).sum())
        self.fired |= (innovations != 0).reshape(-1, self.width).any(0).cpu()
        return self

    @property
    def l0(self) -> float:
        """L0 = (non-zero innovations over all steps) / positions: features paid for per position."""
        return self.innovations / self.positions

    @property
    def state_l0(self) -> float:
        """State L0 = (non-zero state entries) / positions, counted exactly: the model zeroes
        carried values below its carry_threshold, so the decoder uses exactly these."""
        return self.state / self.positions

    @property
    def dead_fraction(self) -> float:
        """Dead fraction = features never active (as an innovation) on the set / width."""
        return 1 - float(self.fired.float().mean())


def fvu(x: Tensor, x_hat: Tensor) -> float:
    """`ReconstructionSums.fvu` on one tensor pair."""
    return ReconstructionSums().add(x, x_hat).fvu


def mse(x: Tensor, x_hat: Tensor) -> float:
    """`ReconstructionSums.mse` on one tensor pair."""
    return ReconstructionSums().add(x, x_hat).mse


def l0(codes: Tensor, positions: int | None = None) -> float:
    """`SparsitySums.l0`: non-zeros of codes (..., F) per position (default: all leading entries)."""
    n = positions if positions is not None else codes[..., 0].numel()
    return int((codes != 0).sum()) / n


def switch_rate(active: Tensor, regions: Tensor) -> Tensor:
    """Within-region switch rate per feature: among consecutive position pairs (t-1, t) that lie
    in the same labelled region, the fraction where the feature turns on or off.

    active (B, T, F) bool, regions (B, T) int labels -> (F,) rates (NaN if no such pair).
    A feature that holds over a region without flicker scores 0."""
    same = regions[:, 1:] == regions[:, :-1]  # (B, T-1)
    flips = active[:, 1:] != active[:, :-1]  # (B, T-1, F)
    pairs = int(same.sum())
    if pairs == 0:
        return torch.full((active.shape[-1],), float("nan"), device=active.device)
    return (flips & same[..., None]).sum((0, 1)).double() / pairs


def persistence(active: Tensor) -> dict[str, float]:
    """How much of a per-position SAE's code merely repeats the previous position: the ceiling on
    what any carry can save. active (B, T, F) bool ->

    - persistent_fraction: among active (position, feature) pairs at t >= 1, the share also active
      at t - 1 (a carry could at best not pay for those again);
    - mean_run_length: mean length of the runs of consecutive positions a feature is active in;
    - best_innovation_ratio: 1 / (1 - persistent_fraction), the fewest innovations a carry could
      leave, as a ratio to L0 (inf when every active pair persists)."""
    active = active.bool()
    later, before = active[:, 1:], active[:, :-1]
    on = int(later.sum())
    kept = int((later & before).sum())
    fraction = kept / on if on else float("nan")
    starts = int(active[:, :1].sum()) + int((later & ~before).sum())  # a run starts where it was off before
    run_length = int(active.sum()) / starts if starts else float("nan")
    best = float("inf") if fraction == 1.0 else 1.0 / (1.0 - fraction) if not math.isnan(fraction) else float("nan")
    return {"persistent_fraction": fraction, "mean_run_length": run_length, "best_innovation_ratio": best}
