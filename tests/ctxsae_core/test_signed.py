"""Signed innovations (`ContextualConfig.signed`): a paid code may lower or end a carried
feature. Hand-built walks with known codes, the contextual invariants with negative codes in
play, and the config's checks."""

import pytest
import torch
from torch.testing import assert_close

from ctxsae_core import BatchTopK, ContextualConfig, ContextualSAE, JumpReLU, ReLU, TopK, make_axis
from ctxsae_common.errors import InputError
from ctxsae_core.config import config_to_dict, sae_config_from_dict
from ctxsae_core.metrics import l0
from tests.ctxsae_core.hand import identity_sae


def _hand_model(signed: bool):
    """d = F = 4, identity dictionary, BatchTopK with inference threshold 0.05 and encoder bias
    -0.01, persistence 1, no resets."""
    m = identity_sae(activation=BatchTopK(k=1), carry="gated", signed=signed)
    m.activation.set_threshold_(0.05)
    return m.eval()


def _walk(m, values):
    x = torch.zeros(1, len(values), 4)
    x[0, :, 0] = torch.tensor(values)
    with torch.no_grad():
        return m(x, make_axis("tokens", len(values)))


def test_a_carried_feature_that_weakens_is_lowered_by_one_negative_code():
    """Feature 0 is 2 for two positions, then 1. By hand: it fires 1.99 at t 0 and is carried;
    at t 2 the residual is -0.99, pre-activation -1.0, so the signed SAE pays -1.0 once and
    carries 0.99 on. The unsigned SAE cannot lower it: it codes nothing and keeps 1.99."""
    out = _walk(_hand_model(signed=True), [2.0, 2.0, 1.0, 1.0, 1.0])
    assert (out.innovations[0] != 0).nonzero().tolist() == [[0, 0], [2, 0]]
    assert out.innovations[0, :, 0].tolist() == pytest.approx([1.99, 0, -1.0, 0, 0])
    assert out.state[0, :, 0].tolist() == pytest.approx([1.99, 1.99, 0.99, 0.99, 0.99])
    assert l0(out.innovations) == pytest.approx(0.4) and l0(out.state) == pytest.approx(1.0)

    unsigned = _walk(_hand_model(signed=False), [2.0, 2.0, 1.0, 1.0, 1.0])
    assert (unsigned.innovations[0] != 0).nonzero().tolist() == [[0, 0]]
    assert unsigned.state[0, :, 0].tolist() == pytest.approx([1.99] * 5)


def test_a_carried_feature_that_ends_is_ended_by_one_code_never_pushed_below_zero():
    """Feature 0 is 2, then 0: pre-activation -2.0 at t 2, but a negative code is bounded by
    minus the prior (-1.99), so the state is exactly 0 from there and nothing is carried."""
    out = _walk(_hand_model(signed=True), [2.0, 2.0, 0.0, 0.0])
    assert out.innovations[0, :, 0].tolist() == pytest.approx([1.99, 0, -1.99, 0])
    assert out.state[0, 2:].abs().sum().item() == 0.0
    assert (out.state[0] != 0).sum(-1).tolist() == [1, 1, 0, 0]


def _random_model(act=BatchTopK(k=3), d=6, f=24):
    torch.manual_seed(0)
    m = ContextualSAE(ContextualConfig(d_in=d, width=f, activation=act, init_persistence=2.0, signed=True))
    m.init_from_data_(torch.randn(4, 16, d))
    with torch.no_grad():
        for p in m.carry.parameters():  # resets of every strength, so some carried values are cut
            p.add_(torch.randn_like(p))
    if hasattr(m.activation, "threshold"):
        m.activation.threshold.fill_(0.05)
    return m.eval()


@pytest.mark.parametrize("act", [TopK(k=3), BatchTopK(k=3)], ids=lambda a: a.kind)
def test_negative_codes_only_where_a_feature_is_carried_and_the_state_stays_non_negative(act):
    m, axis = _random_model(act), make_axis("tokens", 16)
    with torch.no_grad():
        out = m(torch.randn(8, 16, 6) * 2, axis)
    negative = out.innovations < 0
    assert negative.any()  # the case is exercised
    assert not (negative & ~out.carried_support).any()
    assert (out.state >= 0).all()
    assert_close(out.state, (out.carried + out.innovations).clamp_min(0))
    if act.kind == "topk":  # a negative code is paid out of the same budget
        assert ((out.innovations != 0).sum(-1) <= 3).all()


@pytest.mark.parametrize("kind,T,grid", [("tokens", 16, None), ("raster", 16, (4, 4)), ("quadtree", 16, (4, 4))])
def test_the_invariants_hold_with_negative_codes(kind, T, grid):
    """Invariant 1 (the state is a function of the codes: `propagate` rebuilds it) and 2
    (causal in the axis order)."""
    m, axis = _random_model(), make_axis(kind, T, grid)
    x = torch.randn(3, T, 6) * 2
    with torch.no_grad():
        out = m(x, axis)
        assert (out.innovations < 0).any()
        assert_close(m.propagate(out.innovations, axis), out.state)
        assert_close(out.x_hat, m.decode(out.state))
        xs = axis.expand(x)
        s0 = axis.n_steps - T + T // 2
        base = m.forward_steps(xs, axis)
        xs[:, s0] += 3.0
        moved = m.forward_steps(xs, axis)
    assert torch.equal(moved.innovations[:, :s0], base.innovations[:, :s0])
    assert not torch.equal(moved.innovations[:, s0], base.innovations[:, s0])


def test_signed_training_and_inference_walks_agree_and_gradients_flow():
    m, axis = _random_model().train(), make_axis("tokens", 16)
    x = torch.randn(4, 16, 6) * 2
    trained = m(x, axis)
    with torch.no_grad():
        plain = m(x, axis)
    for name in ("innovations", "state", "x_hat", "pre_acts"):
        assert_close(getattr(trained, name).detach(), getattr(plain, name), msg=name)
    terms = m.loss(x, trained, torch.zeros(24, dtype=torch.bool), axis)
    terms.total.backward()
    assert torch.isfinite(terms.total)
    assert m.W_enc_FD.grad.abs().sum() > 0 and m.carry.persistence.grad.abs().sum() > 0


def test_a_wide_signed_model_walks_dense_states_and_matches_the_reference():
    """The sparse walk has no signed codes, so a signed model walks dense states even where an
    unsigned one would take the sparse walk; its default path equals the reference path."""
    torch.manual_seed(1)
    m = ContextualSAE(ContextualConfig(d_in=64, width=1024, activation=BatchTopK(k=4), init_persistence=2.0,
                                       signed=True))
    x = torch.randn(48, 8, 64)
    m.init_from_data_(x)
    m.activation.threshold.fill_(0.05)
    axis = make_axis("tokens", 8)
    assert not m._walks_sparse(48 * 8, reference=False)
    fast, ref = m(x, axis), m(x, axis, reference=True)
    assert_close(fast.x_hat, ref.x_hat)
    assert torch.equal(fast.innovations != 0, ref.innovations != 0)


def test_signed_config_is_checked_and_round_trips():
    cfg = ContextualConfig(d_in=4, width=8, activation=TopK(k=2), signed=True)
    assert sae_config_from_dict(config_to_dict(cfg)) == cfg
    assert sae_config_from_dict({k: v for k, v in config_to_dict(cfg).items() if k != "signed"}).signed is False
    with pytest.raises(InputError, match="signed=true needs carry 'gated'"):
        ContextualConfig(d_in=4, width=8, activation=TopK(k=2), carry="attention", signed=True)
    for act in (ReLU(), JumpReLU()):
        with pytest.raises(InputError, match="activation topk or batchtopk"):
            ContextualConfig(d_in=4, width=8, activation=act, signed=True)
