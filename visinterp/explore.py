"""Exploring a finished `visinterp run` from a notebook: its unnamed features, their galleries,
steering with them, and groups of features that fire together."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ctxsae_core.checkpoint import read_json
from visinterp.image_report import gallery_figure, image_maps, steering_figure
from visinterp.image_run import Run
from visinterp.image_saes import steer
from visinterp.run_config import run_config_from_dict


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


class RunView:
    """A finished run, read back: metrics, config, the autoencoder (from its cache or folder),
    the held-out images, and per hook the SAEs and their codes on the held-out windows."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.metrics = read_json(self.folder / "metrics.json", "run metrics")
        self.config = run_config_from_dict(read_json(self.folder / "config.json", "run config"), "config.json")
        self.job = Run(self.config, self.folder, progress=False)
        self._hooks: dict[str, dict] = {}

    @property
    def hooks(self) -> list[str]:
        return list(self.metrics["analysed"])

    def contextual(self, hook: str) -> str:
        """Name of the contextual SAE the report analysed for `hook`."""
        return self.metrics["analysed"][hook][1]

    def hook(self, hook: str) -> dict:
        if hook not in self._hooks:
            self._hooks[hook] = self.job.load_hook(hook)
        return self._hooks[hook]

    def state(self, hook: str, name: str | None = None) -> Tensor:
        """State codes (held-out windows, T, F) of an SAE (default: the analysed contextual one)."""
        return self.job.codes(self.hook(hook), name or self.contextual(hook))["state"]

    def unnamed(self, hook: str, name: str | None = None) -> list[int]:
        """Live features aligned with no known scene factor, most active first (from metrics.json)."""
        return self.metrics["alignment"][hook][name or self.contextual(hook)]["unnamed"]

    def state_maps(self, hook: str, name: str | None = None) -> list[Tensor]:
        """Per held-out image, the state codes as maps (F, h, w)."""
        state, n = self.state(hook, name), len(self.job.held)
        return [image_maps(state, i, state.shape[0] // n, self.job.map_hw(self.hook(hook)), self.config.harvest.tile)
                for i in range(n)]

    def gallery(self, hook: str, features: list[int], name: str | None = None, top: int = 6):
        name = name or self.contextual(hook)
        return gallery_figure(self.job.held_images, self.state_maps(hook, name), features,
                              min(top, len(self.job.held)), f"{hook} {name}")

    def steer(self, hook: str, features: list[int], name: str | None = None, scale: float | None = None,
              images: int = 3):
        """Add each feature's decoder direction (scale x its mean active value) at every patch of
        the hook's map and decode: a figure of before | after per feature."""
        name = name or self.contextual(hook)
        scale = self.config.report.steer_scale if scale is None else scale
        model = self.hook(hook)["models"][name][1]
        state = self.state(hook, name).reshape(-1, model.config.width)
        slots = list(range(min(images, len(self.job.held))))
        after = steer(self.job.ae, model, hook, self.job.held_images[slots], state, features, scale)
        return steering_figure(self.job.clean[slots], after, slots, scale)
