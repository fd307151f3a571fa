"""BatchTopK's cap on the codes at one position (`BatchTopK.max_per_position`): against the
threshold, a position keeps at most cap x budget of its entries, its largest; the pooled
selection of per-position training is left alone."""

import pytest
import torch
from torch.testing import assert_close

from ctxsae_common.errors import InputError
from ctxsae_core import BatchTopK, ContextualConfig, ContextualSAE, make_axis
from ctxsae_core.activations import BatchTopKActivation
from ctxsae_core.config import config_to_dict, sae_config_from_dict
from ctxsae_core.sweep import SweepConfig, sweep_specs

PRE = torch.tensor([[3.0, 2.0, 1.0, 0.5, 0.0, 0.0],
                    [0.05, 0.2, 0.0, 0.0, 0.0, 0.0],
                    [0.3, 0.4, 0.5, 0.6, 0.7, 0.8]])


def _fired(act, pre, path):
    if path == "codes":
        return (act.codes(pre) != 0).nonzero().tolist()
    rows, cols = act.select_sampling(pre, False, [])
    return torch.stack([rows, cols], 1).tolist()


@pytest.mark.parametrize("path", ["codes", "select"])
@pytest.mark.parametrize("threshold", [0.0, 0.1])  # 0: no guess, the plain comparison; 0.1: the guess's sampling
def test_a_position_keeps_its_largest_cap_times_budget_codes_above_the_threshold(path, threshold):
    act = BatchTopKActivation(BatchTopK(k=1, max_per_position=2), width=6)
    act.threshold.fill_(threshold)
    # row 0: 4 entries over 0.1, the 2 largest kept; row 1: one over 0.1 (two over 0); row 2: the 2 largest
    want = {0.0: [[0, 0], [0, 1], [1, 0], [1, 1], [2, 4], [2, 5]], 0.1: [[0, 0], [0, 1], [1, 1], [2, 4], [2, 5]]}
    assert _fired(act, PRE, path) == want[threshold]
    act.set_budget_(1.5)  # the cap follows the annealed budget: ceil(2 x 1.5) = 3 a position
    assert [c for r, c in _fired(act, PRE, path) if r == 2] == [3, 4, 5]
    uncapped = BatchTopKActivation(BatchTopK(k=1), width=6)
    uncapped.threshold.fill_(threshold)
    assert len([r for r, _ in _fired(uncapped, PRE, path) if r == 0]) == 4
    assert act.codes(PRE)[0, 0] == 3.0  # a kept code is its pre-activation


def test_the_pooled_selection_is_not_capped():
    act = BatchTopKActivation(BatchTopK(k=2, max_per_position=1), width=6)
    rows, _ = act.select(PRE, pooled=True)  # the batch's 6 largest: 3 of row 0 and 3 of row 2
    assert sorted(rows.tolist()) == [0, 0, 0, 2, 2, 2]


def test_a_wide_contextual_walk_keeps_the_cap_and_matches_the_reference():
    torch.manual_seed(1)
    x = torch.randn(48, 8, 64)
    axis = make_axis("tokens", 8)
    counts = {}
    for cap in (None, 2):
        torch.manual_seed(1)
        m = ContextualSAE(ContextualConfig(d_in=64, width=1024, activation=BatchTopK(k=4, max_per_position=cap),
                                           init_persistence=2.0))
        m.init_from_data_(x)
        m.activation.threshold.fill_(0.05)  # low: many entries of a step clear it
        m.eval()
        assert m._walks_sparse(48 * 8, reference=False)
        fast = m(x, axis)
        counts[cap] = (fast.innovations != 0).sum(-1)
    ref = m(x, axis, reference=True)  # the capped model's reference path codes the same
    assert_close(fast.x_hat, ref.x_hat)
    assert torch.equal(fast.innovations != 0, ref.innovations != 0)
    assert int(counts[2].max()) == 8 and int(counts[None].max()) > 8  # measured: 428 a position uncapped


def test_the_cap_is_checked_round_trips_and_reaches_a_sweeps_contextual_saes():
    cfg = ContextualConfig(d_in=4, width=8, activation=BatchTopK(k=2, max_per_position=4))
    assert sae_config_from_dict(config_to_dict(cfg)) == cfg
    old = config_to_dict(ContextualConfig(d_in=4, width=8, activation=BatchTopK(k=2)))
    old["activation"].pop("max_per_position")  # an SAE saved before the field existed
    assert sae_config_from_dict(old).activation.max_per_position is None
    with pytest.raises(InputError, match="max_per_position=0.5 must be at least 1"):
        BatchTopK(k=2, max_per_position=0.5)
    with pytest.raises(InputError, match="sweep.max_per_position=0 must be at least 1"):
        SweepConfig(max_per_position=0)
    specs = sweep_specs(SweepConfig(k=(2,), k_contextual=(2,), max_per_position=4.0), d=8)
    assert {s.name: getattr(s.config.activation, "max_per_position", None) for s in specs} == {
        "topk_k2": None, "contextual_gated_k2": 4.0, "contextual_gated_k2_control": 4.0}
