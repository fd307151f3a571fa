"""Sparse codes and the kernels that make training cheap on a CPU.

A dense SAE step costs about six (N x D x F) matrix products. Here the encoder's forward is
the only dense product: pre-activations are computed without autograd, the activation picks
the entries that fire, and `gather_linear` recomputes just those entries' gradients
(N * k * D work). Decoding goes through `embedding_bag`, which reads only the k decoder rows
a position uses.

A contextual walk adds `PaddedCodes`, each row's few entries in a (rows, K) array, so that a
step costs O(K) per row, not O(width); and `DeferredGrads`, which sums the weight gradients
of a walk's many small steps in one kernel at the end of the backward pass. All are checked
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

    def decode(self, W_FD: Tensor) -> Tensor:
        """sum_i vals_i * W[cols_i] per row: (n_rows, D), reading only the rows used."""
        return F.embedding_bag(self.cols, W_FD, self.offsets(), mode="sum", per_sample_weights=self.vals)

    def to_dense(self) -> Tensor:
        z = self.vals.new_zeros(self.n_rows, self.width)
        return z.index_put((self.rows, self.cols), self.vals)


class DeferredGrads:
    """The gradients of a weight (F, D) and bias (F,) that many small steps of one walk use,
    formed in one batched kernel instead of one dense (F, D) gradient per step. Each step's
    backward records its pieces (grad_W[f] += w * X[r], grad_b[f] += w); `token`, a zero scalar
    that the steps take as an input, ties them to the parameters: autograd runs the token's
    backward only after every step that used it, and that backward returns the sums."""

    def __init__(self, W_FD: Tensor, b_F: Tensor | None = None):
        self._pieces: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []  # X (n, D), rows, cols, w
        self._bias = b_F is not None
        self.token = _ReleaseGrads.apply(self, W_FD, b_F)

    def add_(self, X_ND: Tensor, rows: Tensor, cols: Tensor, w: Tensor) -> None:
        self._pieces.append((X_ND, rows, cols, w))

    def release(self, W_FD: Tensor) -> tuple[Tensor, Tensor | None]:
        """(grad_W, grad_b) from the pieces recorded so far, which are then forgotten."""
        f = W_FD.shape[0]
        if not self._pieces:
            return torch.zeros_like(W_FD), W_FD.new_zeros(f) if self._bias else None
        starts = torch.cumsum(torch.tensor([0] + [p[0].shape[0] for p in self._pieces[:-1]]), 0).tolist()
        X = torch.cat([p[0] for p in self._pieces])
        rows = torch.cat([p[1] + start for p, start in zip(self._pieces, starts)])
        cols, w = (torch.cat([p[i] for p in self._pieces]) for i in (2, 3))
        self._pieces = []
        order = torch.argsort(cols, stable=True)  # rows of grad_W gather the pieces of each feature
        counts = torch.bincount(cols, minlength=f)
        grad_W = F.embedding_bag(rows[order], X, torch.cumsum(counts, 0) - counts, mode="sum",
                                 per_sample_weights=w[order])
        return grad_W, torch.zeros(f, dtype=w.dtype).index_add_(0, cols, w) if self._bias else None


class _ReleaseGrads(torch.autograd.Function):
    @staticmethod
    def forward(ctx, grads, W_FD, b_F):  # type: ignore[override]
        ctx.grads = grads
        ctx.save_for_backward(W_FD)
        return W_FD.new_zeros(())

    @staticmethod
    def backward(ctx, _):  # type: ignore[override]
        return None, *ctx.grads.release(ctx.saved_tensors[0])


class _GatherLinear(torch.autograd.Function):
    """vals_i = x[rows_i] . W[cols_i] + b[cols_i], read off a precomputed `pre`; the backward
    pass touches only the gathered entries (and leaves W's and b's to `deferred`, if given)."""

    @staticmethod
    def forward(ctx, x_ND, W_FD, b_F, pre_NF, rows, cols, token, deferred):  # type: ignore[override]
        ctx.save_for_backward(x_ND, W_FD, rows, cols)
        ctx.deferred = deferred
        return pre_NF[rows, cols]

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
            # rows of W's gradient gather the inputs that used each feature: sort by feature
            order = torch.argsort(cols, stable=True)
            counts = torch.bincount(cols, minlength=f)
            grad_W = F.embedding_bag(rows[order], x_ND, torch.cumsum(counts, 0) - counts, mode="sum",
                                     per_sample_weights=grad_vals[order])
        if ctx.needs_input_grad[2]:
            grad_b = torch.zeros(f, dtype=grad_vals.dtype).index_add_(0, cols, grad_vals)
        return grad_x, grad_W, grad_b, None, None, None, grad_token, None


def gather_linear(x_ND: Tensor, W_FD: Tensor, b_F: Tensor, pre_NF: Tensor, rows: Tensor, cols: Tensor,
                  deferred: DeferredGrads | None = None) -> Tensor:
    """Entries (rows, cols) of x @ W.T + b, with gradients for x, W and b; `pre_NF` must hold
    x @ W.T + b already (computed without autograd). With `deferred` (made for this W and b),
    W's and b's gradients are summed there, once for all steps of a walk."""
    if deferred is None:
        return _GatherLinear.apply(x_ND, W_FD, b_F, pre_NF, rows, cols, None, None)
    return _GatherLinear.apply(x_ND, W_FD.detach(), b_F.detach(), pre_NF, rows, cols, deferred.token, deferred)


class _DeferredDecode(torch.autograd.Function):
    """PaddedCodes.decode whose weight gradient goes to a DeferredGrads."""

    @staticmethod
    def forward(ctx, idx, val, W_FD, token, deferred):  # type: ignore[override]
        ctx.save_for_backward(idx, val, W_FD)
        ctx.deferred = deferred
        return F.embedding_bag(idx, W_FD, mode="sum", per_sample_weights=val)

    @staticmethod
    def backward(ctx, grad_ND):  # type: ignore[override]
        idx, val, W_FD = ctx.saved_tensors
        grad_val = None
        if ctx.needs_input_grad[1]:  # embedding_bag's own backward: 4x faster than gathering W[idx]
            with torch.enable_grad():
                weights = val.detach().requires_grad_()
                out = F.embedding_bag(idx, W_FD, mode="sum", per_sample_weights=weights)
                (grad_val,) = torch.autograd.grad(out, weights, grad_ND)
        rows = torch.arange(idx.shape[0]).repeat_interleave(idx.shape[1])
        ctx.deferred.add_(grad_ND, rows, idx.reshape(-1), val.detach().reshape(-1))
        return None, grad_val, None, grad_ND.new_zeros(()), None


class PaddedCodes(NamedTuple):
    """Codes of n rows in padded form, for walks that keep a sparse state per row: row i holds
    (idx[i, j], val[i, j]) wherever valid[i, j]. Padding has value 0, so sums over a row need no
    mask. Every operation costs O(n * K), not O(n * width)."""

    idx: Tensor  # (n, K) long
    val: Tensor  # (n, K), with autograd
    valid: Tensor  # (n, K) bool

    @staticmethod
    def empty(n: int, like: Tensor) -> "PaddedCodes":
        return PaddedCodes(torch.zeros(n, 1, dtype=torch.long), like.new_zeros(n, 1),
                           torch.zeros(n, 1, dtype=torch.bool))

    @staticmethod
    def from_sparse(codes: SparseCodes) -> "PaddedCodes":
        n = codes.n_rows
        counts = torch.bincount(codes.rows, minlength=n)
        k = max(1, int(counts.max())) if codes.rows.numel() else 1
        at = (codes.rows, torch.arange(codes.rows.numel()) - (torch.cumsum(counts, 0) - counts)[codes.rows])
        return PaddedCodes(torch.zeros(n, k, dtype=torch.long).index_put_(at, codes.cols),
                           codes.vals.new_zeros(n, k).index_put(at, codes.vals),
                           torch.zeros(n, k, dtype=torch.bool).index_put_(at, torch.ones((), dtype=torch.bool)))

    def with_values(self, val: Tensor) -> "PaddedCodes":
        return self._replace(val=val)

    def decode(self, W_FD: Tensor, deferred: DeferredGrads | None = None) -> Tensor:
        """sum_j val[..., j] * W[idx[..., j]] per row: (..., D), reading only the rows used; W's
        gradient goes to `deferred` if given (made for this W)."""
        k = self.idx.shape[-1]
        idx, val = self.idx.reshape(-1, k), self.val.reshape(-1, k)
        if deferred is None:  # the valid entries only: stacked steps can carry much padding
            rows, slots = self.valid.reshape(-1, k).nonzero(as_tuple=True)
            out = SparseCodes(rows, idx[rows, slots], val[rows, slots], idx.shape[0], W_FD.shape[0]).decode(W_FD)
        else:
            out = _DeferredDecode.apply(idx, val, W_FD.detach(), deferred.token, deferred)
        return out.reshape(*self.idx.shape[:-1], -1)

    def to_dense(self, width: int) -> Tensor:
        """The values, (..., width), with autograd (one scatter)."""
        return self.val.new_zeros(*self.val.shape[:-1], width).scatter_add_(-1, self.idx, self.val)

    def support(self, width: int) -> Tensor:
        """(..., width) bool: the valid entries."""
        at = self.valid.nonzero(as_tuple=True)
        mask = torch.zeros(*self.idx.shape[:-1], width, dtype=torch.bool)
        return mask.index_put_((*at[:-1], self.idx[at]), torch.ones((), dtype=torch.bool))

    @staticmethod
    def stack(steps: list["PaddedCodes"], dim: int = 1) -> "PaddedCodes":
        """Codes of the same rows at several steps -> one PaddedCodes (n, S, K), K the widest."""
        k = max(codes.idx.shape[-1] for codes in steps)
        pad = [(0, k - codes.idx.shape[-1]) for codes in steps]
        return PaddedCodes(*(torch.stack([F.pad(getattr(codes, name), p) for codes, p in zip(steps, pad)], dim)
                             for name in ("idx", "val", "valid")))

    def rows(self, key) -> "PaddedCodes":
        """The rows `key` picks (e.g. codes.rows((slice(None), steps))), in all three arrays."""
        return PaddedCodes(self.idx[key], self.val[key], self.valid[key])

    def plus(self, other: "PaddedCodes") -> "PaddedCodes":
        """self + other: other's entries at features self holds are added there, the rest appended.
        Entries of self keep their place (and their validity), so a carried entry cut to zero
        stays in the sum's support."""
        same = (other.idx.unsqueeze(2) == self.idx.unsqueeze(1)) & other.valid.unsqueeze(2) & self.valid.unsqueeze(1)
        added = torch.bmm(other.val.unsqueeze(1), same.to(other.val.dtype)).squeeze(1)  # (n, K_self)
        new = other.valid & ~same.any(2)
        return PaddedCodes(torch.cat([self.idx, other.idx], 1), torch.cat([self.val + added, other.val * new], 1),
                           torch.cat([self.valid, new], 1))

    def nonzero_part(self) -> "PaddedCodes":
        """The entries whose value is not zero, packed to the front: K shrinks to the longest row."""
        keep = self.val != 0
        k = max(1, int(keep.sum(1).max()))
        order = torch.sort(keep.to(torch.uint8), dim=1, descending=True, stable=True).indices[:, :k]
        keep = keep.gather(1, order)
        return PaddedCodes(self.idx.gather(1, order), self.val.gather(1, order) * keep, keep)
