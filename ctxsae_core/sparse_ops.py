"""Sparse codes and the kernels that make training cheap on a CPU.

A dense SAE step costs about six (N x D x F) matrix products. Here the encoder's forward is
the only dense product: pre-activations are computed without autograd, the activation picks
the entries that fire, and `gather_linear` recomputes just those entries' gradients
(N * k * D work). Decoding goes through `embedding_bag`, which reads only the k decoder rows
a position uses.

A contextual walk keeps its state as SparseCodes too (`plus`, `nonzero_part`), so that a step
costs O(nnz), not O(rows x width), and uses `DeferredGrads`, which sums the weight gradients
of the walk's many small steps in one kernel at the end of the backward pass. All are checked
against plain dense autograd in tests/ctxsae_core."""

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

    def decode(self, W_FD: Tensor, deferred: "DeferredGrads | None" = None) -> Tensor:
        """sum_i vals_i * W[cols_i] per row: (n_rows, D), reading only the rows used; W's
        gradient goes to `deferred` if given (made for this W)."""
        if deferred is None:
            return F.embedding_bag(self.cols, W_FD, self.offsets(), mode="sum", per_sample_weights=self.vals)
        return _DeferredDecode.apply(self.rows, self.offsets(), self.cols, self.vals, W_FD.detach(),
                                     deferred.token, deferred)

    def to_dense(self) -> Tensor:
        z = self.vals.new_zeros(self.n_rows, self.width)
        return z.index_put((self.rows, self.cols), self.vals)

    # --- a contextual walk's sparse state: every operation costs O(nnz), not O(n_rows * width)

    def with_values(self, vals: Tensor) -> "SparseCodes":
        return self._replace(vals=vals)

    def empty(self) -> "SparseCodes":
        """No codes, for the same rows."""
        none = self.rows[:0]
        return SparseCodes(none, none, self.vals[:0], self.n_rows, self.width)

    def plus(self, other: "SparseCodes") -> "SparseCodes":
        """self + other, entries at the same (row, feature) summed; every entry of either stays
        (a carried entry cut to zero stays in the sum's support). Row-major, like both."""
        keys = torch.cat([self.rows * self.width + self.cols, other.rows * other.width + other.cols])
        unique, where = torch.unique(keys, sorted=True, return_inverse=True)
        vals = self.vals.new_zeros(unique.numel()).index_add(0, where, torch.cat([self.vals, other.vals]))
        return SparseCodes(unique // self.width, unique % self.width, vals, self.n_rows, self.width)

    def nonzero_part(self) -> "SparseCodes":
        """The entries whose value is not zero."""
        keep = self.vals != 0
        return SparseCodes(self.rows[keep], self.cols[keep], self.vals[keep], self.n_rows, self.width)


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
    fired = torch.zeros(steps[0].width, dtype=torch.bool)
    return fired.index_fill_(0, torch.cat([c.cols for c in steps]), True)


def steps_support(steps: list[SparseCodes]) -> Tensor:
    """Codes of the same n rows at S steps -> (n, S, width) bool: their entries, zero-valued ones too."""
    rows, at_step, cols, _ = stack_steps(steps)
    mask = torch.zeros(steps[0].n_rows, len(steps), steps[0].width, dtype=torch.bool)
    return mask.index_put_((rows, at_step, cols), torch.ones((), dtype=torch.bool))


def decode_steps(steps: list[SparseCodes], W_FD: Tensor) -> Tensor:
    """W codes for codes of the same n rows at S steps: (n, S, D), one embedding_bag."""
    n = steps[0].n_rows
    rows, at_step, cols, vals = stack_steps(steps)
    flat = SparseCodes(at_step * n + rows, cols, vals, n * len(steps), steps[0].width)  # step-major: sorted
    return flat.decode(W_FD).reshape(len(steps), n, -1).transpose(0, 1)


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
    return torch.zeros(n_features, dtype=w.dtype).index_add_(0, cols, w)


class DeferredGrads:
    """The gradients of a weight (F, D) and bias (F,) that many small steps of one walk use,
    formed in one batched kernel instead of one dense (F, D) gradient per step. Each step's
    backward records its pieces (grad_W[f] += w * X[r], grad_b[f] += w); `token`, a zero scalar
    that the steps take as an input, ties them to the parameters: autograd runs the token's
    backward only after every step that used it, and that backward returns the sums."""

    def __init__(self, W_FD: Tensor, b_F: Tensor | None = None):
        self._pieces: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []  # X (n, D), rows, cols, w
        self._shape, self._dtype = W_FD.shape, W_FD.dtype
        self._bias = b_F is not None
        self.token = _ReleaseGrads.apply(self, W_FD, b_F)

    def add_(self, X_ND: Tensor, rows: Tensor, cols: Tensor, w: Tensor) -> None:
        self._pieces.append((X_ND, rows, cols, w))

    def release(self) -> tuple[Tensor, Tensor | None]:
        """(grad_W, grad_b) from the pieces recorded so far, which are then forgotten."""
        f = self._shape[0]
        if not self._pieces:
            grad_b = torch.zeros(f, dtype=self._dtype) if self._bias else None
            return torch.zeros(self._shape, dtype=self._dtype), grad_b
        starts = torch.cumsum(torch.tensor([0] + [p[0].shape[0] for p in self._pieces[:-1]]), 0).tolist()
        X = torch.cat([p[0] for p in self._pieces])
        rows = torch.cat([p[1] + start for p, start in zip(self._pieces, starts)])
        cols, w = (torch.cat([p[i] for p in self._pieces]) for i in (2, 3))
        self._pieces = []
        return feature_row_sums(X, rows, cols, w, f), feature_sums(cols, w, f) if self._bias else None


class _ReleaseGrads(torch.autograd.Function):
    @staticmethod
    def forward(ctx, grads, W_FD, b_F):  # type: ignore[override]
        ctx.grads = grads
        return W_FD.new_zeros(())

    @staticmethod
    def backward(ctx, _):  # type: ignore[override]
        return None, *ctx.grads.release()


class _GatherLinear(torch.autograd.Function):
    """vals_i = x[rows_i] . W[cols_i] + b[cols_i], given precomputed; the backward pass touches
    only the gathered entries (and leaves W's and b's to `deferred`, if given)."""

    @staticmethod
    def forward(ctx, x_ND, W_FD, b_F, values, rows, cols, token, deferred):  # type: ignore[override]
        ctx.save_for_backward(x_ND, W_FD, rows, cols)
        ctx.deferred = deferred
        return values.clone()

    @staticmethod
    def backward(ctx, grad_vals):  # type: ignore[override]
        x_ND, W_FD, rows, cols = ctx.saved_tensors
        n, f = x_ND.shape[0], W_FD.shape[0]
        grad_x = grad_W = grad_b = grad_token = None
        if ctx.needs_input_grad[0]:
            counts = torch.bincount(rows, minlength=n)
            crow = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
            with warnings.catch_warnings():  # "CSR support is in beta": indices built right here
                warnings.simplefilter("ignore", UserWarning)
                G = torch.sparse_csr_tensor(crow, cols, grad_vals, (n, f), check_invariants=False)
            grad_x = torch.sparse.mm(G, W_FD)
        if ctx.deferred is not None:
            ctx.deferred.add_(x_ND.detach(), rows, cols, grad_vals)
            grad_token = grad_vals.new_zeros(())
        if ctx.needs_input_grad[1]:
            grad_W = feature_row_sums(x_ND, rows, cols, grad_vals, f)
        if ctx.needs_input_grad[2]:
            grad_b = feature_sums(cols, grad_vals, f)
        return grad_x, grad_W, grad_b, None, None, None, grad_token, None


def gather_linear(x_ND: Tensor, W_FD: Tensor, b_F: Tensor, rows: Tensor, cols: Tensor, values: Tensor,
                  deferred: DeferredGrads | None = None) -> Tensor:
    """Entries (rows, cols) of x @ W.T + b, with gradients for x, W and b; `values` (nnz,) must
    hold those entries already (computed without autograd). With `deferred` (made for this W and
    b), W's and b's gradients are summed there, once for all steps of a walk."""
    if deferred is None:
        return _GatherLinear.apply(x_ND, W_FD, b_F, values, rows, cols, None, None)
    return _GatherLinear.apply(x_ND, W_FD.detach(), b_F.detach(), values, rows, cols, deferred.token, deferred)


class _DeferredDecode(torch.autograd.Function):
    """SparseCodes.decode whose weight gradient goes to a DeferredGrads."""

    @staticmethod
    def forward(ctx, rows, offsets, cols, vals, W_FD, token, deferred):  # type: ignore[override]
        ctx.save_for_backward(rows, offsets, cols, vals, W_FD)
        ctx.deferred = deferred
        return F.embedding_bag(cols, W_FD, offsets, mode="sum", per_sample_weights=vals)

    @staticmethod
    def backward(ctx, grad_ND):  # type: ignore[override]
        rows, offsets, cols, vals, W_FD = ctx.saved_tensors
        grad_vals = None
        if ctx.needs_input_grad[3]:  # embedding_bag's own backward: 4x faster than gathering W[cols]
            with torch.enable_grad():
                weights = vals.detach().requires_grad_()
                out = F.embedding_bag(cols, W_FD, offsets, mode="sum", per_sample_weights=weights)
                (grad_vals,) = torch.autograd.grad(out, weights, grad_ND)
        ctx.deferred.add_(grad_ND, rows, cols, vals.detach())
        return None, None, None, grad_vals, None, grad_ND.new_zeros(()), None
