"""The gated carry's walk over sparse states, its backward pass written out by hand.

A training step walks each window's axis in S steps (64 on the throughput benchmark), and each
step is two dozen small operations on a few thousand entries. Under autograd every one of them
also records a node, and the backward pass replays them one by one: recording and replaying
cost more than the arithmetic. Here the whole walk is one autograd Function. Its forward pass
runs without autograd and keeps what the backward pass needs; its backward pass walks the
steps in reverse with the gradients below, and forms the encoder's and decoder's weight
gradients once, for all steps, from the pieces each step leaves (`feature_row_sums`).

At step t with parent p, on the entries (rows, cols) of p's state whose values v are non-zero:

    prior    = cut(scale * hard(gate[cols]) * v)
    enc_in   = bounded(x_t - b_dec - W_dec^T prior, x_t - b_dec)
    u        = act(W_enc enc_in + b_enc)              only the entries that fire are differentiated
    h        = gate[cols] * exp(-(u A)[rows] . B^T[cols])
    carried  = cut(scale * hard(h) * v)
    state    = carried (+) u                           entries at the same (row, feature) summed

`hard` zeroes gates below gate_floor and `cut` carried values at or below carry_threshold;
the gradient passes straight through both (`ContextualSAE._cut`, `Carry.hard`). With position
gates, `gate` is step t's row of an (S, F) table. Steps without
a parent (or with the carry off, scale 0) code u from x_t - b_dec alone, and their state is u.
`ContextualSAE`'s dense walk is the same arithmetic under autograd; the tests check this
walk's values and gradients against it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ctxsae_core.sparse_ops import SparseCodes, csr, entry_dots, feature_row_sums, feature_sums

# The encoder's residual may be at most this many times the centred input's norm. A state that
# overshoots would otherwise feed back into ever larger innovations, step after step.
RESIDUAL_BOUND = 2.0


def _bound_ratio(residual: Tensor, centred: Tensor) -> Tensor:
    """(rows, 1): RESIDUAL_BOUND x the norm of `centred`'s rows over the norm of `residual`'s;
    the bound holds where it is at most 1."""
    return RESIDUAL_BOUND * centred.norm(dim=-1, keepdim=True) / residual.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def bounded(residual: Tensor, centred: Tensor) -> Tensor:
    """Rows of `residual` scaled down to at most RESIDUAL_BOUND x the norm of `centred`'s rows;
    a no-op whenever the carried state is not wildly off."""
    return residual * _bound_ratio(residual, centred).clamp(max=1.0)


def bounded_backward(grad: Tensor, residual: Tensor, centred: Tensor) -> tuple[Tensor, Tensor]:
    """The gradients of `bounded` for its output's gradient `grad`: (residual's, centred's), as
    autograd forms them (the clamps pass gradient where their bound holds with equality)."""
    c_norm = centred.norm(dim=-1, keepdim=True)
    r_norm = residual.norm(dim=-1, keepdim=True)
    limit, r_clamped = RESIDUAL_BOUND * c_norm, r_norm.clamp_min(1e-12)
    ratio = limit / r_clamped
    g_ratio = (grad * residual).sum(-1, keepdim=True) * (ratio <= 1.0)
    g_r_norm = -g_ratio * limit / r_clamped**2 * (r_norm >= 1e-12)
    g_residual = grad * ratio.clamp(max=1.0) + g_r_norm * residual / torch.where(r_norm > 0, r_norm, 1.0)
    g_centred = (RESIDUAL_BOUND * g_ratio / r_clamped) * centred / torch.where(c_norm > 0, c_norm, 1.0)
    return g_residual, g_centred


class WalkSpec(NamedTuple):
    """What the walk needs besides tensors: the axis's parent pointers, the carry's scale (0
    turns it off), the cut and reset floors, and the activation's choice of firing entries."""

    parents: list[int]
    scale: float
    carry_threshold: float
    gate_floor: float
    select: Callable[[Tensor], tuple[Tensor, Tensor]]  # pre (B, F) -> (rows, cols), row-major


class Walk(NamedTuple):
    """One walk's results: per step, the state, the carried codes (at the parent's entries)
    and the innovations, with autograd on their values; the pre-activations (B, S, F) and the
    encoder's inputs (B, S, D), both without autograd."""

    states: list[SparseCodes]
    carried: list[SparseCodes]
    innovations: list[SparseCodes]
    pre_acts: Tensor
    enc_in: Tensor


@dataclass
class _Step:
    """What one step of the forward pass keeps for the backward pass."""

    u: SparseCodes | None = None  # innovations
    u_crow: Tensor | None = None  # their row pointers (`SparseCodes.row_pointers`)
    state: SparseCodes | None = None
    keep: Tensor | None = None  # indices of the state's non-zero entries: the entries later steps read
    kept: SparseCodes | None = None  # those entries
    parent: SparseCodes | None = None  # the parent's `kept` (None: nothing carried)
    parent_crow: Tensor | None = None
    hard_gate: Tensor | None = None  # hard(gate[cols]) at the parent's entries
    prior: Tensor | None = None  # the prior's values there
    u_A: Tensor | None = None  # (B, r)
    decay: Tensor | None = None  # exp(-reset) at the parent's entries
    h: Tensor | None = None  # gate[cols] * decay
    hard_h: Tensor | None = None
    where_c: Tensor | None = None  # where the carried and innovation entries landed in the state
    where_u: Tensor | None = None
    bound: tuple[Tensor, Tensor] | None = None  # (residual, centred) if the bound held anywhere


@dataclass
class _Tape:
    spec: WalkSpec
    steps: list[_Step] = field(default_factory=list)
    pre_acts: Tensor | None = None  # (S, F, B)
    enc_in: Tensor | None = None  # (S, B, D)


def _cut(y: Tensor, scale: float, threshold: float) -> Tensor:
    if scale != 1.0:
        y = scale * y
    return y.masked_fill(y <= threshold, 0.0)


def _forward_step(tape: _Tape, t: int, x_t: Tensor, b_dec: Tensor, W_dec: Tensor, W_enc: Tensor, b_enc: Tensor,
                  gate: Tensor, hard_gate: Tensor, A: Tensor, B_T: Tensor) -> tuple[SparseCodes, SparseCodes]:
    """Step t of the walk without autograd; returns (state, carried)."""
    spec, step = tape.spec, _Step()
    p = spec.parents[t]
    parent = tape.steps[p].kept if p >= 0 and spec.scale else None
    centred = x_t - b_dec
    if parent is None:
        enc_in = tape.enc_in[t].copy_(centred)
    else:
        step.parent, step.parent_crow, step.hard_gate = parent, parent.row_pointers(), hard_gate[parent.cols]
        step.prior = _cut(step.hard_gate * parent.vals, spec.scale, spec.carry_threshold)
        residual = centred - parent.with_values(step.prior).decode(W_dec, step.parent_crow)
        ratio = _bound_ratio(residual, centred)
        if bool((ratio <= 1.0).any()):  # `bounded`, whose scale is otherwise exactly 1
            step.bound = (residual, centred)
            residual = residual * ratio.clamp(max=1.0)
        enc_in = tape.enc_in[t].copy_(residual)
    # W x^T into the step's slice: faster than x W^T at few rows. Under bfloat16 autocast the
    # product runs in bfloat16 and is stored in float32, as everything after it is.
    if torch.is_autocast_enabled(x_t.device.type):
        pre = tape.pre_acts[t].copy_(torch.addmm(b_enc.unsqueeze(1), W_enc, enc_in.T)).T
    else:
        pre = torch.addmm(b_enc.unsqueeze(1), W_enc, enc_in.T, out=tape.pre_acts[t]).T
    rows, cols = spec.select(pre)
    u = step.u = SparseCodes(rows, cols, pre[rows, cols], pre.shape[0], pre.shape[1])
    step.u_crow = u.row_pointers()
    if parent is None:
        state, carried = u, u.empty()
    else:
        step.u_A = u.decode(A, step.u_crow)
        step.decay = torch.exp(-entry_dots(parent, step.u_A, B_T, step.parent_crow))
        step.h = gate[parent.cols] * step.decay
        step.hard_h = step.h.masked_fill(step.h < spec.gate_floor, 0.0)
        carried = parent.with_values(_cut(step.hard_h * parent.vals, spec.scale, spec.carry_threshold))
        state, step.where_c, step.where_u = carried.merge(u)
    step.state, step.keep = state, (state.vals != 0).nonzero().squeeze(1)
    step.kept = SparseCodes(state.rows[step.keep], state.cols[step.keep], state.vals[step.keep], state.n_rows, state.width)
    tape.steps.append(step)
    return state, carried


def _gather_grad(grad: Tensor | None, where: Tensor | None, extra: Tensor | None) -> Tensor | None:
    g = grad if where is None or grad is None else grad[where]
    if extra is None:
        return g
    return extra if g is None else g + extra


class _PieceSums:
    """Rows of a weight gradient, sum_i w_i * X[r_i] into row cols_i, collected over steps
    and summed in one kernel."""

    def __init__(self):
        self.X, self.rows, self.cols, self.w, self._n = [], [], [], [], 0

    def add(self, X: Tensor, rows: Tensor, cols: Tensor, w: Tensor) -> None:
        self.X.append(X)
        self.rows.append(rows + self._n)
        self.cols.append(cols)
        self.w.append(w)
        self._n += X.shape[0]

    def weight(self, shape: torch.Size, dtype: torch.dtype, device: torch.device) -> Tensor:
        if not self.X:
            return torch.zeros(shape, dtype=dtype, device=device)
        return feature_row_sums(torch.cat(self.X), torch.cat(self.rows), torch.cat(self.cols), torch.cat(self.w),
                                shape[0])

    def bias(self, width: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        if not self.X:
            return torch.zeros(width, dtype=dtype, device=device)
        return feature_sums(torch.cat(self.cols), torch.cat(self.w), width)


class _GatedWalk(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tape: _Tape, xs, b_dec, W_dec, W_enc, b_enc, gate, A, B_T):  # type: ignore[override]
        n_rows, n_steps, d = xs.shape
        tape.pre_acts = xs.new_empty(n_steps, W_enc.shape[0], n_rows)
        tape.enc_in = xs.new_empty(n_steps, n_rows, d)
        hard_gate = gate.masked_fill(gate < tape.spec.gate_floor, 0.0)
        per_step = gate.dim() == 2  # position gates: one row of gates a step
        states, carried = [], []
        for t in range(n_steps):
            s, c = _forward_step(tape, t, xs[:, t], b_dec, W_dec, W_enc, b_enc, gate[t] if per_step else gate,
                                 hard_gate[t] if per_step else hard_gate, A, B_T)
            states.append(s)
            carried.append(c)
        ctx.tape = tape
        ctx.save_for_backward(W_dec, W_enc, gate, A, B_T)
        ctx.set_materialize_grads(False)
        return (torch.cat([s.vals for s in states]), torch.cat([c.vals for c in carried]),
                torch.cat([st.u.vals for st in tape.steps]))

    @staticmethod
    @once_differentiable
    def backward(ctx, g_states, g_carried, g_innovations):  # type: ignore[override]
        tape: _Tape = ctx.tape
        W_dec, W_enc, gate, A, B_T = ctx.saved_tensors
        spec, steps, scale = tape.spec, tape.steps, tape.spec.scale
        n_rows, dtype = steps[0].u.n_rows, W_enc.dtype

        def per_step(grad: Tensor | None, sizes: list[int]) -> list[Tensor | None]:
            return [None] * len(sizes) if grad is None else list(grad.split(sizes))

        g_state = per_step(g_states, [s.state.vals.numel() for s in steps])
        g_carry = per_step(g_carried, [0 if s.parent is None else s.parent.vals.numel() for s in steps])
        g_innov = per_step(g_innovations, [s.u.vals.numel() for s in steps])
        from_children: list[Tensor | None] = [None] * len(steps)  # gradients of each state's kept entries
        g_gate = torch.zeros_like(gate)
        g_b_dec = W_dec.new_zeros(W_dec.shape[1])
        need_xs = ctx.needs_input_grad[1]
        g_xs = W_dec.new_zeros(n_rows, len(steps), W_dec.shape[1]) if need_xs else None
        enc, dec, reset_in, reset_out = _PieceSums(), _PieceSums(), _PieceSums(), _PieceSums()
        for t in range(len(steps) - 1, -1, -1):
            st = steps[t]
            gs = g_state[t]
            if from_children[t] is not None:
                gs = torch.zeros_like(st.state.vals) if gs is None else gs.clone()
                gs.index_add_(0, st.keep, from_children[t])
            g_parent = None
            g_gate_t = g_gate[t] if g_gate.dim() == 2 else g_gate  # a view: adding to it adds to g_gate
            if st.parent is None:
                g_u = _gather_grad(gs, None, g_innov[t])
            else:
                par = st.parent
                g_c = _gather_grad(gs, st.where_c, g_carry[t])
                g_u = _gather_grad(gs, st.where_u, g_innov[t])
                if g_c is not None:  # carried = cut(scale * hard(h) * v), h = gate[cols] * exp(-reset)
                    g_c = g_c * scale if scale != 1.0 else g_c
                    g_parent = g_c * st.hard_h
                    g_h = g_c * par.vals
                    g_gate_t.index_add_(0, par.cols, g_h * st.decay)
                    g_reset = -(g_h * st.h)  # reset = (u A)[rows] . B^T[cols]
                    g_uA = torch.sparse.mm(csr(par.rows, par.cols, g_reset, st.parent_crow, par.width), B_T)
                    reset_out.add(st.u_A, par.rows, par.cols, g_reset)
                    g_from_reset = entry_dots(st.u, g_uA, A, st.u_crow)
                    g_u = g_from_reset if g_u is None else g_u + g_from_reset
                    reset_in.add(g_uA, st.u.rows, st.u.cols, st.u.vals)
            if g_u is not None:  # u = entries of W_enc enc_in + b_enc
                enc.add(tape.enc_in[t], st.u.rows, st.u.cols, g_u)
                g_enc_in = torch.sparse.mm(csr(st.u.rows, st.u.cols, g_u, st.u_crow, st.u.width), W_enc)
                if st.parent is None:
                    g_centred = g_enc_in
                else:  # enc_in = bounded(centred - W_dec^T prior, centred)
                    g_residual, g_centred = g_enc_in, g_enc_in
                    if st.bound is not None:
                        g_residual, g_extra = bounded_backward(g_enc_in, *st.bound)
                        g_centred = g_residual + g_extra
                    dec.add(-g_residual, par.rows, par.cols, st.prior)
                    g_prior = -entry_dots(par, g_residual, W_dec, st.parent_crow)
                    g_prior = g_prior * scale if scale != 1.0 else g_prior
                    g_gate_t.index_add_(0, par.cols, g_prior * par.vals)
                    g_from_prior = g_prior * st.hard_gate
                    g_parent = g_from_prior if g_parent is None else g_parent + g_from_prior
                g_b_dec -= g_centred.sum(0)
                if g_xs is not None:
                    g_xs[:, t] = g_centred
            if st.parent is not None and g_parent is not None:
                p = spec.parents[t]
                from_children[p] = g_parent if from_children[p] is None else from_children[p] + g_parent
        width = W_enc.shape[0]
        device = W_enc.device
        g_W_enc = enc.weight(W_enc.shape, dtype, device) if ctx.needs_input_grad[4] else None
        g_b_enc = enc.bias(width, dtype, device) if ctx.needs_input_grad[5] else None
        g_W_dec = dec.weight(W_dec.shape, dtype, device) if ctx.needs_input_grad[3] else None
        g_A = reset_in.weight(A.shape, dtype, device) if ctx.needs_input_grad[7] else None
        g_B_T = reset_out.weight(B_T.shape, dtype, device) if ctx.needs_input_grad[8] else None
        return None, g_xs, g_b_dec, g_W_dec, g_W_enc, g_b_enc, g_gate, g_A, g_B_T


def gated_walk(spec: WalkSpec, xs: Tensor, b_dec: Tensor, W_dec: Tensor, W_enc: Tensor, b_enc: Tensor,
               gate: Tensor, A: Tensor, B_T: Tensor) -> Walk:
    """Walk windows xs (B, S, D) (normalised units, one row per step) along `spec.parents`
    with the gated carry's persistence gates `gate`, (F,) or one row a step (S, F), and resets
    A (F, r), B^T (F, r)."""
    tape = _Tape(spec)
    state_vals, carried_vals, innovation_vals = _GatedWalk.apply(tape, xs, b_dec, W_dec, W_enc, b_enc, gate, A, B_T)
    steps = tape.steps

    def rebuild(codes: list[SparseCodes], flat: Tensor) -> list[SparseCodes]:
        return [c.with_values(v) for c, v in zip(codes, flat.split([c.vals.numel() for c in codes]))]

    carried = [s.u.empty() if s.parent is None else s.parent for s in steps]
    return Walk(rebuild([s.state for s in steps], state_vals), rebuild(carried, carried_vals),
                rebuild([s.u for s in steps], innovation_vals), tape.pre_acts.permute(2, 0, 1),
                tape.enc_in.permute(1, 0, 2))
