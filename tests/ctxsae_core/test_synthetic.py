import pytest
import torch

from ctxsae_core.synthetic import RegionsData, RegionsSpec, dictionary_recovery


def test_true_rate_matches_the_drawn_windows():
    spec = RegionsSpec(d=16, n_groups=6, values_per_group=4, mean_region_length=8.0, n_local=20, local_per_position=3)
    data = RegionsData(spec, T=32, seed=0)
    w = data.windows(4000, seed=1)
    assert w.new_features.float().mean().item() == pytest.approx(spec.true_rate(32), rel=0.01)
    assert (w.new_features[:, 0] == 6 + 3).all()  # every group starts at the first position


def test_regions_hold_their_value_and_magnitude_between_switches():
    spec = RegionsSpec(d=8, n_groups=2, values_per_group=3, n_local=4, local_per_position=0, noise=0.0)
    data = RegionsData(spec, T=20, seed=0)
    w = data.windows(50, seed=2)
    changed = (w.regions[:, 1:] != w.regions[:, :-1]).any(-1)  # (N, T-1)
    same_x = torch.isclose(w.x[:, 1:], w.x[:, :-1], atol=1e-6).all(-1)
    assert torch.equal(~changed, same_x)  # x moves exactly where a region switches
    assert torch.equal(w.new_features[:, 1:], (w.regions[:, 1:] != w.regions[:, :-1]).sum(-1))


def test_streams_are_deterministic():
    data = RegionsData(RegionsSpec(d=8, n_groups=2, n_local=4), T=8, seed=0, batch_windows=3)
    a, b = data.iter_from(5), data.iter_from(5)
    assert torch.equal(next(a), next(b))
    assert not torch.equal(next(data.iter_from(5)), next(data.iter_from(6)))


def test_dictionary_recovery_by_hand():
    true = torch.eye(3)
    learned = torch.tensor([[1.0, 0, 0], [0, 1.0, 1.0], [0, 0, -1.0]])
    # best cosines: e0 -> 1; e1 -> 1/sqrt(2); e2 -> 1/sqrt(2)
    assert dictionary_recovery(true, learned) == pytest.approx((1 + 2 * 2 ** -0.5) / 3)
