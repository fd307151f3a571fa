"""Localization against region labels, on cases small enough to count by hand."""

import pytest
import torch

from visinterp.analysis.localization import localization, near_boundary


def test_near_boundary_marks_two_tokens_either_side():
    b = torch.zeros(1, 9, dtype=torch.bool)
    b[0, 4] = True
    assert near_boundary(b)[0].tolist() == [False, False, True, True, True, True, True, False, False]


def test_localization_on_a_hand_case():
    region = torch.tensor([[0] * 6 + [1] * 6])
    boundaries = torch.zeros_like(region, dtype=torch.bool)
    boundaries[0, 6] = True
    state = torch.zeros(1, 12, 2)
    state[0, 6:, 0] = 1.0  # feature 0 holds over region 1 without flicker
    state[0, ::2, 1] = 1.0  # feature 1 flickers everywhere
    innovations = torch.zeros(1, 12, 2)
    innovations[0, 6, 0] = 1.0  # paid once, at the boundary
    innovations[0, 0, 1] = 1.0
    out = localization(state, innovations, region, boundaries, ("prose", "code"), tracking_auroc=0.9)
    assert out["best_auroc_by_region"]["code"] == 1.0 and out["n_region_tracking_features"] == 1
    assert out["switch_rate_of_region_tracking_features"] == 0.0
    assert out["innovations_near_boundary"] == 0.5 and out["positions_near_boundary"] == pytest.approx(5 / 12)
