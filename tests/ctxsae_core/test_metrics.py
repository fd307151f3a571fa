"""Every metric on a case small enough to compute by hand."""

import math

import pytest
import torch

from ctxsae_core.metrics import ReconstructionSums, SparsitySums, fvu, l0, mse, switch_rate


def test_fvu_and_mse_by_hand():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 0.0]])
    x_hat = torch.tensor([[1.0, 2.0], [3.0, 3.0], [4.0, 0.0]])
    # mean = (3, 2); sum ||x - mean||^2 = 4 + 4 + 8 = 16; sum ||x - x_hat||^2 = 0 + 1 + 1 = 2
    assert fvu(x, x_hat) == pytest.approx(2 / 16)
    assert mse(x, x_hat) == pytest.approx(2 / 6)


def test_fvu_of_the_mean_is_one_and_of_x_is_zero():
    x = torch.randn(50, 8)
    assert fvu(x, x.mean(0).expand_as(x)) == pytest.approx(1.0, rel=1e-6)  # float32 mean
    assert fvu(x, x) == 0.0


def test_streaming_sums_match_one_batch():
    x, x_hat = torch.randn(2, 30, 4), torch.randn(2, 30, 4)
    sums = ReconstructionSums().add(x[0], x_hat[0]).add(x[1], x_hat[1])
    assert sums.fvu == pytest.approx(fvu(x, x_hat), rel=1e-12)
    assert sums.mse == pytest.approx(mse(x, x_hat), rel=1e-12)


def test_l0_counts_paid_innovations_per_input_position():
    innov = torch.tensor([[[1.0, 0, 0], [0, 0, 0], [2.0, 3.0, 0]]])  # (1, 3 steps, F=3)
    assert l0(innov) == pytest.approx(1.0)
    assert l0(innov, positions=2) == pytest.approx(1.5)  # a quadtree: 3 steps pay for 2 inputs


def test_sparsity_sums_l0_state_l0_dead():
    s = SparsitySums(width=4)
    innov = torch.tensor([[[1.0, 0, 0, 0], [0, 0, 0.5, 0]]])  # features 0 and 2 fire
    state = torch.tensor([[[1.0, 0, 0, 0], [0.9, 0, 0.5, 0]]])
    s.add(innov, state, positions=2)
    assert s.l0 == pytest.approx(1.0)
    assert s.state_l0 == pytest.approx(1.5)
    assert s.dead_fraction == pytest.approx(0.5)


def test_switch_rate_by_hand():
    f0 = [1, 1, 0, 0, 1]
    f1 = [0, 1, 1, 1, 1]
    active = torch.tensor([f0, f1]).T.unsqueeze(0).bool()  # (1, 5, 2)
    regions = torch.tensor([[0, 0, 0, 1, 1]])
    # same-region pairs: (0,1), (1,2), (3,4); f0 flips at (1,2) and (3,4); f1 at (0,1)
    rate = switch_rate(active, regions)
    assert rate.tolist() == pytest.approx([2 / 3, 1 / 3])


def test_switch_rate_without_pairs_is_nan():
    rate = switch_rate(torch.ones(1, 3, 2, dtype=torch.bool), torch.tensor([[0, 1, 2]]))
    assert all(math.isnan(v) for v in rate.tolist())


def test_persistence_counts_what_a_carry_could_skip():
    from ctxsae_core.metrics import persistence

    # feature 0 on at 0,1,3,4; feature 1 on at 1,2,3. At t >= 1 six pairs are on, four of them on
    # the position before (f0 at 1 and 4, f1 at 2 and 3); three runs hold seven active pairs.
    active = torch.tensor([[[1, 0], [1, 1], [0, 1], [1, 1], [1, 0]]], dtype=torch.bool)
    p = persistence(active)
    assert p["persistent_fraction"] == pytest.approx(4 / 6)
    assert p["mean_run_length"] == pytest.approx(7 / 3)
    assert p["best_innovation_ratio"] == pytest.approx(3.0)
    assert persistence(torch.ones(2, 4, 3, dtype=torch.bool))["best_innovation_ratio"] == float("inf")
