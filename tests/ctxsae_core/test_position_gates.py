"""Position gates (`ContextualConfig.position_gates`): the gated carry's persistence also reads
the step's position. Zero at first (the plain carry, exactly), a hand case where a raster row's
wrap resets a feature, and the sparse walk's values and gradients against the dense reference."""

import pytest
import torch
from torch.testing import assert_close

from ctxsae_common.errors import InputError
from ctxsae_core import BatchTopK, ContextualConfig, ContextualSAE, ReLU, make_axis
from ctxsae_core.activations import use_sparse_path
from tests.ctxsae_core.hand import identity_sae

CUDA = pytest.param("cuda", marks=pytest.mark.gpu)


def _pair(d=64, f=1024):
    """The same model twice, the second with position gates (its extra weights zero)."""
    models = []
    for position_gates in (False, True):
        torch.manual_seed(0)
        m = ContextualSAE(ContextualConfig(d_in=d, width=f, activation=BatchTopK(k=4), init_persistence=1.0,
                                           position_gates=position_gates)).double()
        m.init_from_data_(torch.randn(4, 16, d, dtype=torch.float64))
        with torch.no_grad():
            m.carry.reset_in_raw.fill_(-3.0)
            m.carry.reset_out_raw.fill_(-3.0)
            m.activation.threshold.fill_(0.7)
        models.append(m.train())
    return models


def _windows(T, d=64):
    torch.manual_seed(1)
    return torch.randn(32, T, d, dtype=torch.float64) + 2 * torch.randn(32, 1, d, dtype=torch.float64)


def test_position_gates_start_as_the_plain_gated_carry_and_learn():
    plain, positioned = _pair()
    axis, x = make_axis("raster", 16, (4, 4)), _windows(16)
    for reference in (False, True):
        a, b = plain(x, axis, reference=reference), positioned(x, axis, reference=reference)
        assert (a.carried != 0).any()
        for name in ("innovations", "state", "carried", "x_hat"):
            assert torch.equal(getattr(a, name), getattr(b, name)), name
    out = positioned(x, axis)
    positioned.loss(x, out, axis=axis).total.backward()
    grad = positioned.carry.position_persistence.grad
    assert grad[:16].abs().sum() > 0 and not grad[16:].any()  # a raster axis has 16 position features


def test_a_raster_row_wrap_resets_a_feature_its_position_gates_let_go_of():
    """d = F = 4, identity dictionary, ReLU innovations with bias -0.01; feature 0 is on at
    every patch of a 4 x 4 raster window. Its persistence logit is fitted to 20 inside a row and
    -30 at a row's first column, so it is carried along each row and paid for again at each row's
    start: four innovations of 0.99, state 0.99 everywhere."""
    m = identity_sae(activation=ReLU(l1_coeff=0.0), position_gates=True)
    axis = make_axis("raster", 16, (4, 4))
    first_column = torch.arange(16) % 4 == 0
    target = torch.where(first_column, -30.0, 20.0).double()
    design = torch.cat([axis.positions.double(), torch.ones(16, 1, dtype=torch.float64)], 1)
    fit = torch.linalg.lstsq(design, target[:, None], driver="gelsd").solution[:, 0]  # rank-deficient design
    assert_close(design @ fit, target, atol=1e-3, rtol=0)  # the position features can say "first column"
    with torch.no_grad():
        m.carry.persistence[0] = float(fit[-1])
        m.carry.position_persistence[:16, 0] = fit[:-1].float()
    x = torch.zeros(1, 16, 4)
    x[..., 0] = 1.0
    with torch.no_grad():
        out = m.eval()(x, axis)
    assert (out.innovations[0] != 0).nonzero().tolist() == [[0, 0], [4, 0], [8, 0], [12, 0]]
    assert_close(out.innovations[0, ::4, 0], torch.full((4,), 0.99))
    assert_close(out.state[0, :, 0], torch.full((16,), 0.99))
    assert not out.state[0, :, 1:].any()


@pytest.mark.parametrize("kind,T,grid", [("tokens", 8, None), ("raster", 16, (4, 4)), ("quadtree", 16, (4, 4))])
@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_the_sparse_walk_with_position_gates_matches_the_dense_reference(kind, T, grid, device):
    """Random position weights, so that gates differ from step to step: same codes, loss and
    gradients (the position weights' too) on both paths, in float64."""
    _, m = _pair()
    m = m.to(device)
    with torch.no_grad():
        m.carry.position_persistence.copy_(torch.randn_like(m.carry.position_persistence))
    axis, x = make_axis(kind, T, grid), _windows(T).to(device)
    assert use_sparse_path(32, m.W_enc_FD) and m._walks_sparse(32, reference=False)
    results = []
    for reference in (False, True):
        m.zero_grad()
        out = m(x, axis, reference=reference)
        terms = m.loss(x, out, axis=axis)
        terms.total.backward()
        results.append((out, terms.total.detach(), {n: p.grad.clone() for n, p in m.named_parameters()
                                                    if p.grad is not None}))
    (o1, t1, g1), (o2, t2, g2) = results
    assert (o2.carried != 0).any() and (o2.carried == 0).any()
    gates = m.carry.sparse_parts(axis)[0]
    assert gates.shape == (axis.n_steps, m.config.width) and gates.std(0).mean() > 0.01  # gates vary by step
    for name in ("innovations", "state", "carried", "x_hat"):
        assert_close(getattr(o1, name).detach(), getattr(o2, name).detach(), msg=name)
    assert_close(t1, t2)
    assert set(g1) == set(g2) and "carry.position_persistence" in g1
    for name in g2:
        assert_close(g1[name], g2[name], msg=name)


def test_position_gates_need_the_gated_carry():
    with pytest.raises(InputError, match="position_gates=true needs carry 'gated', not 'attention'"):
        ContextualConfig(d_in=4, width=8, carry="attention", position_gates=True)
