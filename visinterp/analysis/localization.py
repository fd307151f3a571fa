"""Localization against region labels (a language span, an object): which feature tracks each
region, how often region-tracking features switch on or off inside a region, and where the
innovations fall relative to region boundaries. A contextual SAE should pay for a region's
feature once, near where the region starts, and carry it."""

from __future__ import annotations

import math

from torch import Tensor

from ctxsae_core.metrics import switch_rate
from visinterp.analysis.alignment import alignment_table


def near_boundary(boundaries: Tensor, radius: int = 2) -> Tensor:
    """(N, T) bool: within `radius` positions of a region boundary (either side)."""
    near = boundaries.clone()
    for shift in range(1, radius + 1):
        near[:, shift:] |= boundaries[:, :-shift]
        near[:, :-shift] |= boundaries[:, shift:]
    return near


def localization(state: Tensor, innovations: Tensor, region: Tensor, boundaries: Tensor, regions: tuple[str, ...],
                 tracking_auroc: float = 0.75) -> dict:
    """Best feature AUROC per region label; mean within-region switch rate of the features that
    track a region (best AUROC >= tracking_auroc); fraction of innovations within 2 positions
    of a region boundary, beside the fraction of positions that are."""
    table = alignment_table(state.reshape(-1, state.shape[-1]), {"region": region.reshape(-1)},
                            names={"region": regions}, min_count=5)
    tracking = (table["best_by_feature"] >= tracking_auroc).nonzero()[:, 0]
    rates = switch_rate(state > 0, region)
    near = near_boundary(boundaries)
    paid = (innovations != 0).sum(-1).float()
    return {"best_auroc_by_region": {k: v["auroc"] for k, v in table["factors"]["region"].items()},
            "best_feature_by_region": {k: v["feature"] for k, v in table["factors"]["region"].items()},
            "n_region_tracking_features": int(tracking.numel()),
            "switch_rate_of_region_tracking_features": float(rates[tracking].nanmean()) if tracking.numel() else math.nan,
            "innovations_near_boundary": float(paid[near].sum() / paid.sum().clamp(min=1)),
            "positions_near_boundary": float(near.float().mean())}


MAX_SWITCH_RATIO = 0.5  # the goal: a contextual SAE's features switch inside a region at most half as often


def switch_comparison(saes: dict[str, dict], rate: str, contextual: str, reference: str) -> dict | None:
    """The within-region switch rate `rate` of the SAE rows `contextual` and `reference` (the
    per-position SAE at the same budget), their ratio against the goal, and the contextual SAE's
    shuffled control's rate beside them; None where either SAE lacks a finite rate, or the
    reference never switches (no ratio to take)."""
    ours, theirs = (saes.get(name, {}).get(rate) for name in (contextual, reference))
    if ours is None or theirs is None or math.isnan(ours) or not theirs > 0:
        return None
    ratio = ours / theirs
    return {"rate": rate, "contextual": contextual, "reference": reference, "contextual_rate": ours,
            "reference_rate": theirs, "control_rate": saes.get(f"{contextual}_control", {}).get(rate),
            "ratio": ratio, "max_ratio": MAX_SWITCH_RATIO, "goal_met": ratio <= MAX_SWITCH_RATIO}
