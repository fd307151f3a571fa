"""The gated carry's hand-written walk against autograd (the whole model's fast path is checked
against the dense reference in test_contextual.py)."""

import pytest
import torch
from torch.testing import assert_close

from ctxsae_core import BatchTopK, ContextualConfig, ContextualSAE, make_axis
from ctxsae_core.sparse_walk import RESIDUAL_BOUND, bounded, bounded_backward


def test_bounded_backward_matches_autograd_on_rows_cut_and_not():
    torch.manual_seed(0)
    centred = torch.randn(6, 5, dtype=torch.float64)
    residual = centred * torch.tensor([0.5, 1.0, 3.0, 5.0, 1.5, 8.0], dtype=torch.float64)[:, None]
    residual = residual + 0.1 * torch.randn(6, 5, dtype=torch.float64)
    ratio = RESIDUAL_BOUND * centred.norm(dim=1) / residual.norm(dim=1)
    assert (ratio < 1).sum() >= 2 and (ratio > 1).sum() >= 2  # both kinds of row
    r, c = residual.clone().requires_grad_(), centred.clone().requires_grad_()
    grad = torch.randn(6, 5, dtype=torch.float64)
    bounded(r, c).backward(grad)
    g_residual, g_centred = bounded_backward(grad, residual, centred)
    assert_close(g_residual, r.grad)
    assert_close(g_centred, c.grad)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_the_walk_differentiates_its_input_like_the_dense_reference(device):
    torch.manual_seed(0)
    d, f = 64, 1024  # 32 rows x 1024 x 64: the sparse path
    m = ContextualSAE(ContextualConfig(d_in=d, width=f, activation=BatchTopK(k=4), init_persistence=1.0)).double()
    m = m.to(device)
    x = (torch.randn(32, 8, d, dtype=torch.float64) + 2 * torch.randn(32, 1, d, dtype=torch.float64)).to(device)
    m.init_from_data_(x)
    with torch.no_grad():
        m.carry.reset_in_raw.fill_(-3.0)
        m.carry.reset_out_raw.fill_(-3.0)
        m.activation.threshold.fill_(0.45)  # a few dozen codes a position, some carried
    m.train()
    assert m._walks_sparse(32, reference=False)  # otherwise this compares the reference with itself
    axis = make_axis("tokens", 8)
    grads = []
    for reference in (False, True):
        xr = x.clone().requires_grad_()
        out = m(xr, axis, reference=reference)
        (out.x_hat.pow(2).sum() + out.carried.sum()).backward()
        grads.append(xr.grad)
    assert (out.carried != 0).any() and (out.innovations != 0).any()
    assert_close(grads[0], grads[1])
