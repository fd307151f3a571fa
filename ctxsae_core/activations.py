"""Activations: how an encoder's pre-activations become codes (TopK, BatchTopK, ReLU + L1,
JumpReLU), with each one's sparsity penalty and running statistics.

Every activation offers `encode`, which returns the codes and the pre-activations. TopK,
BatchTopK and ReLU give no gradient to codes that do not fire, so they take the sparse fast
path (`ctxsae_core.sparse_ops`); JumpReLU's threshold gradient needs dense codes."""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ctxsae_core.config import ActivationConfig, BatchTopK, JumpReLU, ReLU, TopK
from ctxsae_core.distributed import Group, group
from ctxsae_core.registry import ACTIVATION_MODULES
from ctxsae_core.sparse_ops import SparseCodes, gather_linear


class Encoded(NamedTuple):
    """What an activation's `encode` returns: the codes (dense and/or COO), the pre-activations,
    and a sample of them for the running statistics."""

    dense: Tensor | None  # (N, F) codes, with autograd (None if not asked for on the sparse path)
    sparse: SparseCodes | None  # the same codes in COO form, when the activation is sparse-grad
    pre: Tensor  # (N, F) pre-activations (with autograd only on the dense path)
    sample: Tensor | None = None  # what `select_sampling` collected of pre for `update_statistics_`


# The sparse kernels pay off for wide dictionaries and enough work; below these a dense product
# costs less than the small kernels they launch. Both paths give the same numbers; the
# thresholds are timings on a 2-core CPU (CHANGELOG.md).
SPARSE_MIN_WIDTH = 1024
SPARSE_MIN_WORK = 2**21  # rows x F x D multiply-adds
# Decoding through the sparse kernels costs O(entries x D), the dense product O(rows x F x D) at
# a faster rate per multiply-add; the two cross near 5% of entries at F 4608, D 576.
SPARSE_MAX_DENSITY = 0.04


def use_sparse_path(rows: int, W_FD: Tensor) -> bool:
    """Whether encoding `rows` rows with dictionary W (F, D) takes the sparse kernels (wide enough, enough work)."""
    f, d = W_FD.shape
    return f >= SPARSE_MIN_WIDTH and rows * f * d >= SPARSE_MIN_WORK


def project(codes: Tensor, W_FD: Tensor, support: Tensor | None = None) -> Tensor:
    """codes (N, F) @ W (F, D), through `SparseCodes.decode` where that pays: a wide dictionary,
    enough rows, and at most SPARSE_MAX_DENSITY of the entries in `support` (default: the
    non-zero codes). For codes whose entries outside the support get no gradient downstream
    (a sparse activation's codes; a contextual SAE's cut carried values): then both paths give
    the same values and gradients."""
    if use_sparse_path(codes.shape[0], W_FD):
        support = codes != 0 if support is None else support
        if support.sum() <= SPARSE_MAX_DENSITY * support.numel():
            return SparseCodes.from_dense(codes, support).decode(W_FD)
    return codes @ W_FD


class Activation(nn.Module):
    """Base: select which entries fire; the sparse path differentiates only those."""

    sparse_grad = True  # codes that do not fire get no gradient
    has_statistics = False  # True when update_statistics_ keeps running statistics
    has_penalty = False  # True when penalty is not always zero

    def __init__(self, cfg: ActivationConfig, width: int):
        super().__init__()
        self.cfg = cfg
        self.width = width

    def select(self, pre: Tensor, pooled: bool) -> tuple[Tensor, Tensor]:
        """(rows, cols) of the entries of `pre` (N, F) that fire, row-major. `pooled`: the batch
        shares one budget (BatchTopK in training); otherwise every row is coded alone."""
        raise NotImplementedError

    def select_sampling(self, pre: Tensor, pooled: bool, sample: list[Tensor]) -> tuple[Tensor, Tensor]:
        """`select(pre, pooled)`, also appending to `sample` the values of `pre` that
        `update_statistics_` will read (nothing, for activations without statistics), so that
        it need not pass over all the pre-activations again."""
        return self.select(pre, pooled)

    def encode(self, x_c: Tensor, W_FD: Tensor, b_F: Tensor, pooled: bool = False, dense: bool = True) -> Encoded:
        """Codes of the centred inputs `x_c` (N, D) under encoder W (F, D), b (F,). With
        `dense=False`, codes on the sparse path come in COO form only (`Encoded.dense` is None)."""
        if not use_sparse_path(x_c.shape[0], W_FD):
            return self.encode_reference(x_c, W_FD, b_F, pooled)
        enc = self.encode_sparse(x_c, W_FD, b_F, pooled)
        return enc._replace(dense=enc.sparse.to_dense()) if dense else enc

    def encode_sparse(self, x_c: Tensor, W_FD: Tensor, b_F: Tensor, pooled: bool = False) -> Encoded:
        """The sparse path of `encode`, without dense codes: codes in COO form, and the
        pre-activations (N, F), computed without autograd; only the entries that fire are
        differentiated."""
        with torch.no_grad():  # in x_c's dtype after the product, under bfloat16 autocast too
            pre = F.linear(x_c, W_FD, b_F).to(x_c.dtype)
        sample: list[Tensor] = []
        rows, cols = self.select_sampling(pre, pooled, sample)
        vals = gather_linear(x_c, W_FD, b_F, rows, cols, pre[rows, cols])
        return Encoded(None, SparseCodes(rows, cols, vals, pre.shape[0], pre.shape[1]), pre,
                       torch.cat(sample) if sample else None)

    def encode_reference(self, x_c: Tensor, W_FD: Tensor, b_F: Tensor, pooled: bool = False) -> Encoded:
        """The same codes by plain dense autograd: the reference the fast path is tested against."""
        pre = F.linear(x_c, W_FD, b_F)
        return Encoded(self.codes(pre, pooled), None, pre)

    def codes(self, pre: Tensor, pooled: bool = False) -> Tensor:
        """Dense codes (N, F) straight from pre-activations: the entries `select` picks, with
        pre's gradient there (the reference path) or without autograd (an inference walk)."""
        rows, cols = self.select(pre.detach(), pooled)
        return torch.zeros_like(pre).index_put((rows, cols), pre[rows, cols])

    def penalty(self, innovations: Tensor, pre: Tensor, n_positions: int) -> Tensor:
        """Sparsity loss, summed over steps and divided by the number of positions paid for
        (only called when `has_penalty`)."""
        raise NotImplementedError

    def update_statistics_(self, pre: Tensor, n_positions: int, sample: Tensor | None = None) -> None:
        """Update running statistics from a training step's pre-activations (..., F) (called by
        the trainer); `sample`: what `select_sampling` collected of them, if it ran."""


class _BudgetActivation(Activation):
    """TopK-family activations: `budget` is the k in use, cfg.k unless the trainer is
    annealing it (it is not saved: a trained model codes with cfg.k)."""

    cfg: TopK

    def __init__(self, cfg: TopK, width: int):
        super().__init__(cfg, width)
        self.budget: float = float(cfg.k)

    def set_budget_(self, k: float) -> None:
        """Code with budget k (a float: the trainer anneals it) until set again."""
        self.budget = float(k)


@ACTIVATION_MODULES.decorator("topk")
class TopKActivation(_BudgetActivation):
    """The k largest pre-activations of each position fire, where positive (Gao et al. 2024)."""

    def select(self, pre: Tensor, pooled: bool) -> tuple[Tensor, Tensor]:
        k = min(round(self.budget), pre.shape[1])
        vals, idx = pre.topk(k, dim=1, sorted=False)
        idx, order = idx.sort(dim=1)
        keep = vals.gather(1, order) > 0  # TopK of ReLU(pre): non-positive winners stay off
        rows = torch.arange(pre.shape[0], device=pre.device).unsqueeze(1).expand_as(idx)
        return rows[keep], idx[keep]


_CANDIDATES_PER_BUDGET = 4  # rows' candidates for the pooled cut-off: 4x the mean budget
_GUESS_BELOW_THRESHOLD = 0.8  # BatchTopK's cut-off is first sought among entries >= 0.8 x threshold


def _storage_order(t: Tensor) -> Tensor:
    """`t` with its axes permuted into memory order (contiguous if t is a permuted view of a
    contiguous tensor, such as a contextual walk's pre-activations), so a pass over it streams."""
    return t.permute(sorted(range(t.ndim), key=lambda i: -t.stride(i)))


def _at_or_above(pre: Tensor, guess: float) -> Tensor:
    """(n,) the entries of `pre` at or above `guess`, in no particular order: one pass over pre."""
    stored = _storage_order(pre)  # the same entries; order does not matter here
    return stored[stored >= guess]


def cut_between(values: Tensor, n_keep: int) -> Tensor:
    """A cut-off with exactly `n_keep` of the 1-D `values` above it: midway between the n_keep-th
    and the (n_keep+1)-th largest (the n_keep-th itself when there is no other). A cut-off equal
    to an entry would leave that entry to rounding where the cut-off selects from the very
    pre-activations it was computed on (the first training batch, a calibration); midway, a
    recomputation on another device or kernel picks the same entries as long as its rounding
    stays within half the gap between the two."""
    if values.numel() <= n_keep:
        return values.min()
    nxt, nth = values.topk(n_keep + 1, sorted=False).values.topk(2, largest=False).values
    return (nth + nxt) / 2


def _pooled_cut(pre: Tensor, n_keep: int, candidates: Tensor | None = None) -> Tensor:
    """`cut_between` of all the entries of `pre` (..., F), rows along the last axis. A top-k
    over all N * F entries is slow, so:

    - given `candidates`, the entries of `pre` at or above some guess (`_at_or_above`), and more
      than n_keep of them, only those are searched (exact, and the fastest way);
    - otherwise each row first offers its 4 * (n_keep + 1) / N largest, and the cut-off among
      those is exact whenever every row's smallest offer lies below the (n_keep+1)-th largest
      offer: no entry left out can then reach the top n_keep + 1. Failing that (one row holding
      many of the largest entries) all entries are searched."""
    f = pre.shape[-1]
    n = pre.numel() // f
    if candidates is not None and candidates.numel() > n_keep:
        return cut_between(candidates, n_keep)
    per_row = _CANDIDATES_PER_BUDGET * -(-(n_keep + 1) // n)
    if per_row < f:
        offers = pre.topk(per_row, dim=-1, sorted=False).values
        top = offers.reshape(-1).topk(n_keep + 1, sorted=False).values
        if bool((offers.min(-1).values < top.min()).all()):
            return cut_between(top, n_keep)
    return cut_between(pre.reshape(-1), n_keep)


@ACTIVATION_MODULES.decorator("batchtopk")
class BatchTopKActivation(_BudgetActivation):
    """In pooled mode (per-position training) the batch's N * k largest entries fire; otherwise
    entries above `threshold` fire. The threshold tracks the pooled cut-off: an EMA of each
    training batch's cut-off with N * k pre-activations above it (Bussmann et al. 2024, sec. 3,
    with the cut-off midway between the (N * k)-th and the next, `cut_between`)."""

    cfg: BatchTopK
    has_statistics = True

    def __init__(self, cfg: BatchTopK, width: int):
        super().__init__(cfg, width)
        self.register_buffer("threshold", torch.zeros(()))
        self.register_buffer("threshold_seen", torch.zeros((), dtype=torch.bool))

    def _guess(self) -> float | None:
        """The threshold tracks the pooled cut-off, so most of the time a little below it
        (0.8 x threshold) is below the cut-off too; None before the threshold is set."""
        return _GUESS_BELOW_THRESHOLD * float(self.threshold) if float(self.threshold) > 0 else None

    def _cutoff(self, pre: Tensor, n_positions: int, candidates: Tensor | None = None,
                over_ranks: bool = True) -> Tensor:
        """The cut-off with n_positions * budget entries of `pre` (..., F) above it (`cut_between`),
        at least 0, sought first among the entries at or above `_guess()`: `candidates` if already
        found. Under data-parallel training it is the global batch's cut-off (every rank's `pre`
        together); with `over_ranks=False`, this rank's alone (rank 0's held-out evaluations)."""
        g = group() if over_ranks else Group()
        n_keep = min(max(1, round(self.budget * n_positions * g.world)), pre.numel() * g.world)
        guess = self._guess()
        if candidates is None and guess is not None:
            candidates = _at_or_above(pre, guess)
        if g.world == 1:
            return _pooled_cut(pre, n_keep, candidates).clamp_min(0)
        if candidates is not None:  # every rank takes the same branch: the gathered count is the same
            gathered = g.gather_cat(candidates.reshape(-1))
            if gathered.numel() > n_keep:
                return cut_between(gathered, n_keep).clamp_min(0)
        # the global top n_keep + 1 lie among the ranks' own top n_keep + 1: exact
        local = pre.reshape(-1).topk(min(n_keep + 1, pre.numel()), sorted=False).values
        return cut_between(g.gather_cat(local), n_keep).clamp_min(0)

    def cutoff(self, pre: Tensor, n_positions: int, over_ranks: bool = True) -> Tensor:
        """The pooled cut-off of pre-activations `pre` (..., F) of n_positions positions at the
        current budget: the value above which k codes a position fire on average, over every
        rank under data-parallel training (every rank must call it), or with `over_ranks=False`
        over this rank's alone (one rank may call it alone)."""
        return self._cutoff(pre, n_positions, over_ranks=over_ranks)

    @torch.no_grad()
    def set_threshold_(self, value: Tensor | float) -> None:
        """Set the inference threshold (the trainer calibrates it at the end of training)."""
        self.threshold.fill_(float(value))
        self.threshold_seen.fill_(True)

    @contextmanager
    def threshold_restored(self) -> Iterator[None]:
        """Inside, the inference threshold may be set freely (a held-out evaluation at another
        threshold); on leaving, it and whether it was ever set are as they were."""
        saved = self.threshold.clone(), self.threshold_seen.clone()
        try:
            yield
        finally:
            with torch.no_grad():
                self.threshold.copy_(saved[0])
                self.threshold_seen.copy_(saved[1])

    def select(self, pre: Tensor, pooled: bool) -> tuple[Tensor, Tensor]:
        return self.select_sampling(pre, pooled, [])

    def select_sampling(self, pre: Tensor, pooled: bool, sample: list[Tensor]) -> tuple[Tensor, Tensor]:
        """`select`, collecting the entries at or above the guess, among which the threshold's
        update then finds the pooled cut-off without a second pass over all the
        pre-activations. Pooled, the cut-off is sought among them first anyway. Against the
        threshold, the entries above it are picked from among them (one pass serves both): a
        contextual walk collects them step by step while `pre` is at hand, so the update never
        reads all the walk's pre-activations again."""
        guess = self._guess()
        if pooled:
            candidates = None
            if guess is not None:
                candidates = _at_or_above(pre, guess)
                sample.append(candidates)
            cut = self._cutoff(pre, pre.shape[0], candidates)
            return ((pre >= cut) & (pre > 0)).nonzero(as_tuple=True)
        floor = self._cap_floor(pre)
        if guess is None:
            over = pre > self.threshold
            return (over if floor is None else over & (pre >= floor)).nonzero(as_tuple=True)
        rows, cols = (pre >= guess).nonzero(as_tuple=True)
        vals = pre[rows, cols]
        sample.append(vals)
        fire = vals > self.threshold
        if floor is not None:
            fire &= vals >= floor[rows, 0]
        return rows[fire], cols[fire]

    def codes(self, pre: Tensor, pooled: bool = False) -> Tensor:
        if pooled:
            return super().codes(pre, pooled)
        floor = self._cap_floor(pre)
        below = pre <= self.threshold  # == select's `pre > threshold`, one pass
        return pre.masked_fill(below if floor is None else below | (pre < floor), 0.0)

    def _cap_floor(self, pre: Tensor) -> Tensor | None:
        """(..., 1): each position's `max_per_position` x budget-th largest pre-activation, below
        which none of its entries fires against the threshold; None without a cap (or one no
        smaller than the width)."""
        if self.cfg.max_per_position is None:
            return None
        cap = max(1, math.ceil(self.cfg.max_per_position * self.budget))
        if cap >= pre.shape[-1]:
            return None
        return pre.topk(cap, dim=-1, sorted=False).values.min(-1, keepdim=True).values

    @torch.no_grad()
    def update_statistics_(self, pre: Tensor, n_positions: int, sample: Tensor | None = None) -> None:
        cut = self._cutoff(pre, n_positions, sample)
        if not bool(self.threshold_seen):
            self.threshold.copy_(cut)
            self.threshold_seen.fill_(True)
        else:
            m = self.cfg.threshold_momentum
            self.threshold.mul_(m).add_((1 - m) * cut)


@ACTIVATION_MODULES.decorator("relu")
class ReLUActivation(Activation):
    """Every positive pre-activation fires; the penalty is their L1 norm."""

    cfg: ReLU
    has_penalty = True

    def select(self, pre: Tensor, pooled: bool) -> tuple[Tensor, Tensor]:
        return (pre > 0).nonzero(as_tuple=True)

    def penalty(self, innovations: Tensor, pre: Tensor, n_positions: int) -> Tensor:
        # codes are >= 0 and decoder rows unit norm: sum |z| ||W_dec|| == sum z
        return self.cfg.l1_coeff * innovations.sum() / n_positions


class _JumpReLUFn(torch.autograd.Function):
    """pre * H(pre - theta); d/dtheta by the rectangle-kernel STE (Rajamanoharan et al. 2024, eq. 11)."""

    @staticmethod
    def forward(ctx, pre, log_threshold, bandwidth):  # type: ignore[override]
        theta = log_threshold.exp()
        ctx.save_for_backward(pre, theta)
        ctx.bandwidth = bandwidth
        return pre * (pre > theta)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        pre, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        near = ((pre - theta).abs() < eps / 2).to(grad.dtype)
        grad_theta = (-(theta / eps) * near * grad).sum(0)
        return grad * (pre > theta), grad_theta * theta, None


class _StepFn(torch.autograd.Function):
    """H(pre - theta) with the rectangle-kernel STE for theta (Rajamanoharan et al. 2024, eq. 12)."""

    @staticmethod
    def forward(ctx, pre, log_threshold, bandwidth):  # type: ignore[override]
        theta = log_threshold.exp()
        ctx.save_for_backward(pre, theta)
        ctx.bandwidth = bandwidth
        return (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        pre, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        near = ((pre - theta).abs() < eps / 2).to(grad.dtype)
        return None, (-(1 / eps) * near * grad).sum(0) * theta, None


@ACTIVATION_MODULES.decorator("jumprelu")
class JumpReLUActivation(Activation):
    """pre * H(pre - theta) with a learned threshold per feature; the penalty counts what fires (L0)."""

    cfg: JumpReLU
    sparse_grad = False
    has_penalty = True

    def __init__(self, cfg: JumpReLU, width: int):
        super().__init__(cfg, width)
        self.log_threshold = nn.Parameter(torch.full((width,), float(torch.tensor(cfg.init_threshold).log())))

    def select(self, pre: Tensor, pooled: bool) -> tuple[Tensor, Tensor]:
        return (pre > self.log_threshold.exp()).nonzero(as_tuple=True)

    def encode(self, x_c: Tensor, W_FD: Tensor, b_F: Tensor, pooled: bool = False, dense: bool = True) -> Encoded:
        pre = F.linear(x_c, W_FD, b_F)
        return Encoded(_JumpReLUFn.apply(pre, self.log_threshold, self.cfg.bandwidth), None, pre)

    encode_reference = encode  # already plain dense autograd, with the threshold's gradient

    def penalty(self, innovations: Tensor, pre: Tensor, n_positions: int) -> Tensor:
        steps = _StepFn.apply(pre.reshape(-1, pre.shape[-1]), self.log_threshold, self.cfg.bandwidth)
        return self.cfg.l0_coeff * steps.sum() / n_positions


def make_activation(cfg: ActivationConfig, width: int) -> Activation:
    """The activation module for an activation config, `width` features wide."""
    return ACTIVATION_MODULES[cfg.kind](cfg, width)
