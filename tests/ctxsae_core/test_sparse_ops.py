"""The sparse kernels against plain dense autograd: values and gradients."""

import torch
from torch.testing import assert_close

from ctxsae_core.sparse_ops import SparseCodes, gather_linear


def _random_entries(n, f, per_row):
    cols = torch.rand(n, f).topk(per_row, dim=1).indices.sort(dim=1).values
    rows = torch.arange(n).repeat_interleave(per_row)
    return rows, cols.flatten()


def test_gather_linear_matches_dense_values_and_gradients():
    n, f, d = 40, 30, 12
    x = torch.randn(n, d, requires_grad=True)
    W = torch.randn(f, d, requires_grad=True)
    b = torch.randn(f, requires_grad=True)
    rows, cols = _random_entries(n, f, 5)
    weights = torch.randn(rows.numel())

    dense = (x @ W.T + b)[rows, cols]
    (dense * weights).sum().backward()
    ref = [t.grad.clone() for t in (x, W, b)]
    for t in (x, W, b):
        t.grad = None

    with torch.no_grad():
        pre = x @ W.T + b
    fast = gather_linear(x, W, b, pre, rows, cols)
    (fast * weights).sum().backward()
    assert_close(fast, dense)
    for got, want in zip((x.grad, W.grad, b.grad), ref):
        assert_close(got, want)


def test_sparse_decode_matches_dense_matmul():
    z = torch.relu(torch.randn(25, 40) - 1.0)  # about 16% non-zero
    W = torch.randn(40, 7, requires_grad=True)
    z_ref = z.clone().requires_grad_()
    target = torch.randn(25, 7)
    ((z_ref @ W - target) ** 2).sum().backward()
    ref_gW, ref_gz = W.grad.clone(), z_ref.grad.clone()
    W.grad = None

    z_fast = z.clone().requires_grad_()
    codes = SparseCodes.from_dense(z_fast)
    out = codes.decode(W)
    ((out - target) ** 2).sum().backward()
    assert_close(out, (z @ W).detach())
    assert_close(W.grad, ref_gW)
    nz = z != 0  # gradients reach the non-zero codes only, exactly as the dense ones there
    assert_close(z_fast.grad[nz], ref_gz[nz])
    assert torch.all(z_fast.grad[~nz] == 0)
    assert torch.equal(codes.to_dense().detach(), z)
