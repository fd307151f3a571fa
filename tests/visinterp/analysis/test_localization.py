"""Localization against region labels, on cases small enough to count by hand."""

import pytest
import torch

from visinterp.analysis.localization import localization, near_boundary, switch_comparison


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


def test_switch_comparison_takes_the_ratio_to_the_per_position_sae_and_checks_half():
    saes = {"topk_k4": {"r": 0.008}, "contextual_gated_k4": {"r": 0.005}, "contextual_gated_k4_control": {"r": 0.015},
            "contextual_gated_k2": {"r": 0.004}, "topk_k2": {"r": 0.0}}
    out = switch_comparison(saes, "r", "contextual_gated_k4", "topk_k4")
    assert out["ratio"] == pytest.approx(0.625) and out["goal_met"] is False
    assert out["control_rate"] == 0.015 and out["reference_rate"] == 0.008
    saes["contextual_gated_k4"]["r"] = 0.004  # exactly half: met
    assert switch_comparison(saes, "r", "contextual_gated_k4", "topk_k4")["goal_met"] is True
    assert switch_comparison(saes, "r", "contextual_gated_k2", "topk_k2") is None  # TopK never switches
    assert switch_comparison(saes, "r", "contextual_gated_k8", "topk_k4") is None  # no such SAE
    assert switch_comparison({"a": {"r": float("nan")}, "b": {"r": 0.1}}, "r", "a", "b") is None
