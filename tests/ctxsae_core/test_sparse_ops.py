"""The sparse kernels against plain dense autograd: values and gradients, on the CPU and on
CUDA (the `gpu` cases run on a GPU machine and skip elsewhere)."""

import pytest
import torch
from torch.testing import assert_close

from ctxsae_core.sparse_ops import (SparseCodes, decode_steps, entry_dots, gather_linear, steps_features,
                                   steps_support, steps_to_dense)

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def _random_entries(n, f, per_row, device="cpu"):
    cols = torch.rand(n, f).topk(per_row, dim=1).indices.sort(dim=1).values
    rows = torch.arange(n).repeat_interleave(per_row)
    return rows.to(device), cols.flatten().to(device)


@pytest.mark.parametrize("device", DEVICES)
def test_gather_linear_matches_dense_values_and_gradients(device):
    n, f, d = 40, 30, 12
    x = torch.randn(n, d).to(device).requires_grad_()
    W = torch.randn(f, d).to(device).requires_grad_()
    b = torch.randn(f).to(device).requires_grad_()
    rows, cols = _random_entries(n, f, 5, device)
    weights = torch.randn(rows.numel()).to(device)

    dense = (x @ W.T + b)[rows, cols]
    (dense * weights).sum().backward()
    ref = [t.grad.clone() for t in (x, W, b)]
    for t in (x, W, b):
        t.grad = None

    with torch.no_grad():
        pre = x @ W.T + b
    fast = gather_linear(x, W, b, rows, cols, pre[rows, cols])
    (fast * weights).sum().backward()
    assert_close(fast, dense)
    for got, want in zip((x.grad, W.grad, b.grad), ref):
        assert_close(got, want)


@pytest.mark.parametrize("device", DEVICES)
def test_sparse_decode_matches_dense_matmul(device):
    z = torch.relu(torch.randn(25, 40) - 1.0).to(device)  # about 16% non-zero
    W = torch.randn(40, 7).to(device).requires_grad_()
    z_ref = z.clone().requires_grad_()
    target = torch.randn(25, 7).to(device)
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


def _codes(n, f, per_row, generator_seed=0, device="cpu"):
    """Random codes whose rows hold 1..per_row entries, sparse and dense."""
    g = torch.Generator().manual_seed(generator_seed)
    dense = torch.zeros(n, f)
    for i in range(n):
        cols = torch.randperm(f, generator=g)[: 1 + i % per_row]
        dense[i, cols] = torch.rand(cols.numel(), generator=g) + 0.1
    dense = dense.to(device)
    return SparseCodes.from_dense(dense), dense


@pytest.mark.parametrize("device", DEVICES)
def test_walk_operations_on_sparse_codes_match_dense_codes(device):
    a, dense_a = _codes(6, 20, 4, 0, device)
    b, dense_b = _codes(6, 20, 3, 1, device)
    both, where_a, where_b = a.merge(b)  # shared features summed, the rest kept; row-major like its parts
    assert_close(both.to_dense(), dense_a + dense_b)
    assert both.vals.numel() == int(((dense_a + dense_b) != 0).sum())  # no entry twice
    assert torch.equal(both.rows, both.rows.sort().values)
    for part, where in ((a, where_a), (b, where_b)):  # each part's entries, found in the sum
        assert torch.equal(both.rows[where], part.rows) and torch.equal(both.cols[where], part.cols)
    assert a.empty().to_dense().abs().sum() == 0 and a.merge(a.empty())[0].to_dense().equal(dense_a)
    values, support = steps_to_dense([a, b, a.empty()]), steps_support([a, b, a.empty()])  # (6, 3, 20)
    assert torch.equal(values, torch.stack([dense_a, dense_b, torch.zeros_like(dense_a)], 1))
    assert torch.equal(support, values != 0)
    assert torch.equal(steps_features([a, b, a.empty()]), (values != 0).any(1).any(0))
    W = torch.randn(20, 5).to(device)
    assert_close(decode_steps([a, b], W), torch.stack([dense_a @ W, dense_b @ W], 1))


@pytest.mark.parametrize("device", DEVICES)
def test_entry_dots_are_the_dense_products_at_the_entries(device):
    codes, dense = _codes(9, 30, 5, 3, device)
    X, W = torch.randn(9, 7, dtype=torch.float64).to(device), torch.randn(30, 7, dtype=torch.float64).to(device)
    want = (X @ W.T)[codes.rows, codes.cols]
    assert_close(entry_dots(codes, X, W), want)
    assert entry_dots(codes.empty(), X, W).numel() == 0
