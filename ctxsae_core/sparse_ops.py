"""Sparse codes and the kernels that make training cheap on a CPU.

A dense SAE step costs about six (N x D x F) matrix products. Here the encoder's forward is
the only dense product: pre-activations are computed without autograd, the activation picks
the entries that fire, and `gather_linear` recomputes just those entries' gradients
(N * k * D work). Decoding goes through `embedding_bag`, which reads only the k decoder rows
a position uses.

(`decode`'s backward forms W's gradient with `feature_row_sums` and the codes' with
`entry_dots`, faster than embedding_bag's own backward.) A contextual walk keeps its
state as SparseCodes too (`ctxsae_core.sparse_walk`), so that a step costs O(nnz), not
O(rows x width). All are checked against plain dense autograd in tests/ctxsae_core."""

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

    def row_pointers(self) -> Tensor:
        """(n_rows + 1,) where each row starts in the nnz arrays, and their end (CSR's crow)."""
        counts = torch.bincount(self.rows, minlength=self.n_rows)
        return torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])

    def decode(self, W_FD: Tensor, row_pointers: Tensor | None = None) -> Tensor:
        """sum_i vals_i * W[cols_i] per row: (n_rows, D), reading only the rows used (given
        `row_pointers()` if known)."""
        crow = self.row_pointers() if row_pointers is None else row_pointers
        # in W's dtype: under bfloat16 autocast, values computed by a product come in bfloat16
        return _Decode.apply(self.rows, crow, self.cols, self.vals.to(W_FD.dtype), W_FD)

    def to_dense(self) -> Tensor:
        """The codes as a dense (n_rows, width) tensor, with autograd through the values."""
        z = self.vals.new_zeros(self.n_rows, self.width)
        return z.index_put((self.rows, self.cols), self.vals)

    # --- a contextual walk's sparse state: every operation costs O(nnz), not O(n_rows * width)

    def with_values(self, vals: Tensor) -> "SparseCodes":
        """The same entries with other values."""
        return self._replace(vals=vals)

    def empty(self) -> "SparseCodes":
        """No codes, for the same rows."""
        none = self.rows[:0]
        return SparseCodes(none, none, self.vals[:0], self.n_rows, self.width)

    def merge(self, other: "SparseCodes") -> tuple["SparseCodes", Tensor, Tensor]:
        """(self + other, where self's entries landed in it, where other's did): entries at the
        same (row, feature) are summed, every entry of either stays (a carried entry cut to zero
        stays in the sum's support), and the sum is row-major, like both."""
        keys = torch.cat([self.rows * self.width + self.cols, other.rows * other.width + other.cols])
        unique, where = torch.unique(keys, sorted=True, return_inverse=True)
        vals = self.vals.new_zeros(unique.numel()).index_add(0, where, torch.cat([self.vals, other.vals]))
        n = self.vals.numel()
        return SparseCodes(unique // self.width, unique % self.width, vals, self.n_rows, self.width), where[:n], where[n:]


def stack_steps(steps: list[SparseCodes]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Codes of the same n rows at S steps -> (rows, steps, cols, values), each (sum of nnz,),
    step-major: (rows, steps, cols) index a dense (n, S, width) tensor."""
    rows = torch.cat([c.rows for c in steps])
    at_step = torch.cat([torch.full_like(c.rows, t) for t, c in enumerate(steps)])
    return rows, at_step, torch.cat([c.cols for c in steps]), torch.cat([c.vals for c in steps])


def steps_to_dense(steps: list[SparseCodes]) -> Tensor:
    """Codes of the same n rows at S steps -> their values (n, S, width), with autograd (one scatter)."""
    rows, at_step, cols, vals = stack_steps(steps)
    dense = vals.new_zeros(steps[0].n_rows, len(steps), steps[0].width)
    return dense.index_put_((rows, at_step, cols), vals)  # in place: no copy of the zeros


def steps_features(steps: list[SparseCodes]) -> Tensor:
    """(width,) bool: the features with an entry at any step."""
    fired = torch.zeros(steps[0].width, dtype=torch.bool, device=steps[0].cols.device)
    return fired.index_fill_(0, torch.cat([c.cols for c in steps]), True)


def steps_support(steps: list[SparseCodes]) -> Tensor:
    """Codes of the same n rows at S steps -> (n, S, width) bool: their entries, zero-valued ones too."""
    rows, at_step, cols, _ = stack_steps(steps)
    mask = torch.zeros(steps[0].n_rows, len(steps), steps[0].width, dtype=torch.bool, device=rows.device)
    return mask.index_put_((rows, at_step, cols), torch.ones((), dtype=torch.bool, device=rows.device))


def decode_steps(steps: list[SparseCodes], W_FD: Tensor) -> Tensor:
    """W codes for codes of the same n rows at S steps: (n, S, D), one embedding_bag."""
    n = steps[0].n_rows
    rows, at_step, cols, vals = stack_steps(steps)
    flat = SparseCodes(at_step * n + rows, cols, vals, n * len(steps), steps[0].width)  # step-major: sorted
    return flat.decode(W_FD).reshape(len(steps), n, -1).transpose(0, 1)


def csr(rows: Tensor, cols: Tensor, vals: Tensor, row_pointers: Tensor, width: int) -> Tensor:
    """The (n_rows, width) CSR matrix with entries (rows, cols) = vals, rows sorted."""
    with warnings.catch_warnings():  # "CSR support is in beta": indices built right here
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(row_pointers, cols, vals, (row_pointers.numel() - 1, width),
                                       check_invariants=False)


def entry_dots(codes: SparseCodes, X_ND: Tensor, W_FD: Tensor, row_pointers: Tensor | None = None) -> Tensor:
    """(nnz,): X[rows_i] . W[cols_i] at the entries of `codes` (rows sorted), one
    sampled_addmm, far faster than gathering W's rows."""
    crow = codes.row_pointers() if row_pointers is None else row_pointers
    pattern = csr(codes.rows, codes.cols, X_ND.new_ones(codes.rows.numel()), crow, codes.width)
    return torch.sparse.sampled_addmm(pattern, X_ND, W_FD.T, beta=0.0).values()


def feature_row_sums(X_ND: Tensor, rows: Tensor, cols: Tensor, w: Tensor, n_features: int) -> Tensor:
    """(n_features, D) with row f = sum of w_i * X[rows_i] over the pieces i with cols_i == f: the
    weight gradient of a gathered product, reading only the rows used (embedding_bag over the
    pieces sorted by feature)."""
    order = torch.argsort(cols, stable=True)
    counts = torch.bincount(cols, minlength=n_features)
    return F.embedding_bag(rows[order], X_ND, torch.cumsum(counts, 0) - counts, mode="sum",
                           per_sample_weights=w[order])


def feature_sums(cols: Tensor, w: Tensor, n_features: int) -> Tensor:
    """(n_features,) with entry f = sum of w_i over the pieces with cols_i == f: a bias gradient."""
    return torch.zeros(n_features, dtype=w.dtype, device=w.device).index_add_(0, cols, w)


class _Decode(torch.autograd.Function):
    """SparseCodes.decode; the backward pass reads only the rows used, like the forward."""

    @staticmethod
    def forward(ctx, rows, row_pointers, cols, vals, W_FD):  # type: ignore[override]
        ctx.save_for_backward(rows, row_pointers, cols, vals, W_FD)
        return F.embedding_bag(cols, W_FD, row_pointers[:-1], mode="sum", per_sample_weights=vals)

    @staticmethod
    def backward(ctx, grad_ND):  # type: ignore[override]
        rows, row_pointers, cols, vals, W_FD = ctx.saved_tensors
        grad_vals = grad_W = None
        if ctx.needs_input_grad[3]:
            codes = SparseCodes(rows, cols, vals, grad_ND.shape[0], W_FD.shape[0])
            grad_vals = entry_dots(codes, grad_ND, W_FD, row_pointers)
        if ctx.needs_input_grad[4]:
            grad_W = feature_row_sums(grad_ND, rows, cols, vals.detach(), W_FD.shape[0])
        return None, None, None, grad_vals, grad_W


class _GatherLinear(torch.autograd.Function):
    """vals_i = x[rows_i] . W[cols_i] + b[cols_i], given precomputed; the backward pass touches
    only the gathered entries."""

    @staticmethod
    def forward(ctx, x_ND, W_FD, b_F, values, rows, cols):  # type: ignore[override]
        ctx.save_for_backward(x_ND, W_FD, rows, cols)
        return values.clone()

    @staticmethod
    def backward(ctx, grad_vals):  # type: ignore[override]
        x_ND, W_FD, rows, cols = ctx.saved_tensors
        n, f = x_ND.shape[0], W_FD.shape[0]
        grad_x = grad_W = grad_b = None
        if ctx.needs_input_grad[0]:
            codes = SparseCodes(rows, cols, grad_vals, n, f)
            grad_x = torch.sparse.mm(csr(rows, cols, grad_vals, codes.row_pointers(), f), W_FD)
        if ctx.needs_input_grad[1]:
            grad_W = feature_row_sums(x_ND, rows, cols, grad_vals, f)
        if ctx.needs_input_grad[2]:
            grad_b = feature_sums(cols, grad_vals, f)
        return grad_x, grad_W, grad_b, None, None, None


def gather_linear(x_ND: Tensor, W_FD: Tensor, b_F: Tensor, rows: Tensor, cols: Tensor, values: Tensor) -> Tensor:
    """Entries (rows, cols) of x @ W.T + b, with gradients for x, W and b; `values` (nnz,) must
    hold those entries already (computed without autograd; taken in x's dtype, as a product
    under bfloat16 autocast gives them in bfloat16)."""
    return _GatherLinear.apply(x_ND, W_FD, b_F, values.to(x_ND.dtype), rows, cols)
