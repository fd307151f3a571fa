"""The coordinate-MLP job's config (`visinterp scene-features`): one per-position TopK SAE, one
contextual SAE (gated carry) and its shuffled-context control, and how they are judged."""

from __future__ import annotations

from dataclasses import dataclass

from ctxsae_common.typed import param, require
from ctxsae_core.sweep import SweepConfig


@dataclass(frozen=True)
class CoordsConfig:
    """The SAEs `visinterp scene-features` trains, each flag of the command a field here."""

    width: int = param(512, "features per SAE")
    k: int = param(16, "the per-position TopK SAE's budget")
    k_contextual: int = param(6, "the contextual SAE's innovation budget (BatchTopK)")
    tokens: int = param(400_000, "training positions per SAE")
    batch_windows: int = param(16, "windows per optimiser step")
    lr: float = param(3e-3, "Adam learning rate")
    seed: int = param(0, "seed of the held-out split and of every SAE")
    held_out: float = param(0.2, "fraction of windows held out for scoring")
    unnamed_threshold: float = param(0.75, "a feature whose best factor AUROC stays below this is unnamed")

    def __post_init__(self) -> None:
        require(0 < self.held_out < 1, f"held_out={self.held_out} must lie in (0, 1)")
        require(0 < self.unnamed_threshold <= 1, f"unnamed_threshold={self.unnamed_threshold} must lie in (0, 1]")

    def sweep(self) -> SweepConfig:
        """The job's three SAEs as a sweep."""
        return SweepConfig(width=self.width, per_position=("topk",), k=(self.k,), carries=("gated",),
                           k_contextual=(self.k_contextual,), tokens=self.tokens, batch_windows=self.batch_windows,
                           lr=self.lr, seed=self.seed)
