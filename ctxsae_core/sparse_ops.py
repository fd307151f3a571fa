"""Sparse codes and the two kernels that make training cheap on a CPU.

A dense SAE step costs about six (N x D x F) matrix products. Here the encoder's forward is
the only dense product: pre-activations are computed without autograd, the activation picks
the entries that fire, and `gather_linear` recomputes just those entries' gradients
(N * k * D work). Decoding goes through `embedding_bag`, which reads only the k decoder rows
a position uses. Both are checked against plain dense autograd in tests/ctxsae_core."""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class SparseCodes(NamedTuple):
    """Codes of `n_rows` positions in row-major COO form; `vals` carries autograd."""

    rows: Tensor  # (nnz,) long, sorted
    cols: Tensor  # (nnz,) long
    vals: Tensor  # (nnz,) float
    n_rows: int
    width: int

    @staticmethod
    def from_dense(z: Tensor, support: Tensor | None = None) -> "SparseCodes":
        """(N, F) dense codes -> SparseCodes over `support` (default: the non-zero entries).
        Entries outside the support lose their gradient, which is exact when they are
        structurally zero (a TopK/ReLU code that did not fire)."""
        rows, cols = (z != 0 if support is None else support).nonzero(as_tuple=True)
        return SparseCodes(rows, cols, z[rows, cols], z.shape[0], z.shape[1])

    def offsets(self) -> Tensor:
        """(n_rows,) start of each row in the nnz arrays."""
        counts = torch.bincount(self.rows, minlength=self.n_rows)
        return torch.cumsum(counts, 0) - counts

    def decode(self, W_FD: Tensor) -> Tensor:
        """sum_i vals_i * W[cols_i] per row: (n_rows, D), reading only the rows used."""
        return F.embedding_bag(self.cols, W_FD, self.offsets(), mode="sum", per_sample_weights=self.vals)

    def to_dense(self) -> Tensor:
        z = self.vals.new_zeros(self.n_rows, self.width)
        return z.index_put((self.rows, self.cols), self.vals)


class _GatherLinear(torch.autograd.Function):
    """vals_i = x[rows_i] . W[cols_i] + b[cols_i], read off a precomputed `pre`; the backward
    pass touches only the gathered entries."""

    @staticmethod
    def forward(ctx, x_ND, W_FD, b_F, pre_NF, rows, cols):  # type: ignore[override]
        ctx.save_for_backward(x_ND, W_FD, rows, cols)
        return pre_NF[rows, cols]

    @staticmethod
    def backward(ctx, grad_vals):  # type: ignore[override]
        x_ND, W_FD, rows, cols = ctx.saved_tensors
        n, f = x_ND.shape[0], W_FD.shape[0]
        grad_x = grad_W = grad_b = None
        if ctx.needs_input_grad[0]:
            counts = torch.bincount(rows, minlength=n)
            crow = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
            with warnings.catch_warnings():  # "CSR support is in beta": indices built right here
                warnings.simplefilter("ignore", UserWarning)
                G = torch.sparse_csr_tensor(crow, cols, grad_vals, (n, f), check_invariants=False)
            grad_x = torch.sparse.mm(G, W_FD)
        if ctx.needs_input_grad[1]:
            # rows of W's gradient gather the inputs that used each feature: sort by feature
            order = torch.argsort(cols, stable=True)
            counts = torch.bincount(cols, minlength=f)
            grad_W = F.embedding_bag(rows[order], x_ND, torch.cumsum(counts, 0) - counts, mode="sum",
                                     per_sample_weights=grad_vals[order])
        if ctx.needs_input_grad[2]:
            grad_b = torch.zeros(f, dtype=grad_vals.dtype).index_add_(0, cols, grad_vals)
        return grad_x, grad_W, grad_b, None, None, None


def gather_linear(x_ND: Tensor, W_FD: Tensor, b_F: Tensor, pre_NF: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """Entries (rows, cols) of x @ W.T + b, with gradients for x, W and b; `pre_NF` must hold
    x @ W.T + b already (computed without autograd)."""
    return _GatherLinear.apply(x_ND, W_FD, b_F, pre_NF, rows, cols)
