"""The contextual SAE: each step pays only for what is new against what the state carries.

Walking the axis in causal order, at step t with parent p:

    prior_t = carry(codes < t, u_t = None)          what would be carried if nothing new fired
    u_t     = act(W_enc (x_t - b_dec - W_dec prior_t) + b_enc)      innovations (paid for)
    s_t     = carry(codes < t, u_t) + u_t                           state (what the decoder uses)
    x_hat_t = W_dec s_t + b_dec

The encoder looks back through the prior; the decoder reads codes only (DESIGN.md, invariant
1), every step depends on earlier steps only (2), carried codes are rows of the one
dictionary (3), and `SAEOutput` keeps innovations and state apart (4)."""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ctxsae_core.activations import use_sparse_path
from ctxsae_core.axes import ContextAxis
from ctxsae_core.carry import Carry, make_carry
from ctxsae_core.config import ContextualConfig
from ctxsae_core.errors import InputError
from ctxsae_core.registry import ARCHITECTURES
from ctxsae_core.sae import BaseSAE, SAEOutput
from ctxsae_core.sparse_ops import SparseCodes


# The encoder's residual may be at most this many times the centred input's norm. A state that
# overshoots would otherwise feed back into ever larger innovations (growth seen: 4x per step).
_RESIDUAL_BOUND = 2.0


def _bounded(residual: Tensor, centred: Tensor) -> Tensor:
    """Scale rows of `residual` down to at most _RESIDUAL_BOUND x the norm of `centred`'s rows;
    a no-op whenever the carried state is not wildly off."""
    limit = _RESIDUAL_BOUND * centred.norm(dim=-1, keepdim=True)
    norm = residual.norm(dim=-1, keepdim=True)
    return residual * (limit / norm.clamp_min(1e-12)).clamp(max=1.0)


class _Walk(NamedTuple):
    """A walk's per-step results, each (B, S, F)."""

    states: Tensor
    carried: Tensor
    state_support: Tensor  # bool: entries the decoder differentiates (cut ones included)
    carried_support: Tensor  # bool: entries carried at all
    kept: Tensor  # bool: carried entries above carry_threshold (the cut's decisions)
    prior_kept: Tensor  # bool: the same for the prior the encoder coded against

    @staticmethod
    def stack(steps: list[tuple[Tensor, ...]], record: tuple[str, ...]) -> "_Walk":
        """Per-step tuples -> stacked fields; fields not in `record` are left None."""
        return _Walk(*(torch.stack(column, 1) if name in record else None
                       for name, column in zip(_Walk._fields, zip(*steps))))


@ARCHITECTURES.decorator("contextual")
class ContextualSAE(BaseSAE):
    """With a carry that replays in one batch (gated), training walks twice. The first walk,
    without autograd, codes each step against its prior and records the pre-activations, the
    states and the cut decisions; the second replays it with autograd: every step's prior from
    the recorded parent states, one batched encoder call for all steps, the carry's recurrence
    in one autograd node. That needs the prior's gradient to stop at the parent's state (it
    still reaches the carry's parameters and the dictionary: `GatedCarry.prior`). Other carries
    walk once with autograd. `reference=True` walks once with plain dense autograd: the check
    the fast path is tested against."""

    config: ContextualConfig

    def __init__(self, config: ContextualConfig):
        super().__init__(config)
        self.carry: Carry = make_carry(config)
        self.carry_scale: float = 1.0  # 0 turns the carry off (the trainer's warm-up); not saved

    def param_groups(self, lr: float) -> list[dict]:
        carry = list(self.carry.parameters())
        ids = {id(p) for p in carry}
        rest = [p for p in self.parameters() if id(p) not in ids]
        scale = self.config.carry_lr_scale
        return [{"params": rest, "lr": lr, "lr_scale": 1.0}, {"params": carry, "lr": lr * scale, "lr_scale": scale}]

    def _project(self, codes: Tensor, dense: bool, support: Tensor | None = None) -> Tensor:
        """W_dec codes (no bias), normalised units, reading only the rows of `support` (default:
        the non-zero codes) on the sparse path."""
        if dense or not self.activation.sparse_grad or not use_sparse_path(codes.shape[0], self.W_dec_FD):
            return codes @ self.W_dec_FD
        return SparseCodes.from_dense(codes, support).decode(self.W_dec_FD)

    def _cut(self, carried: tuple[Tensor, Tensor], scale: float,
             kept: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Carried values below carry_threshold become exactly zero, so state L0 counts no dust.
        The gradient passes straight through the cut for entries carried at all (the support),
        so a feature whose carried value is still below it learns whether carrying more would
        help; otherwise a low persistence could never grow. `kept` replays an earlier walk's
        decisions. Returns (value, support, kept)."""
        c, support = carried
        if scale != 1.0:
            c = scale * c
        if kept is None:
            kept = c > self.config.carry_threshold
        if not c.requires_grad:
            return c.masked_fill(~kept, 0.0), support, kept
        ste = torch.where(support, c - c.detach(), torch.zeros((), dtype=c.dtype))  # zero, with gradient
        return torch.where(kept, c, ste), support, kept

    def _walk(self, axis: ContextAxis, batch: int, code_at: Callable[[int, Tensor | None], Tensor],
              look_back: bool = True, kept: Tensor | None = None,
              record: tuple[str, ...] = _Walk._fields) -> _Walk:
        """Walk the axis; `code_at(t, prior)` supplies step t's innovations, given the cut prior
        (value, support) when `look_back` (None at steps with nothing carried). `kept` (B, S, F)
        replays the cut decisions of an earlier walk over the same innovations; `record` names
        the fields to return."""
        mem = self.carry.begin(batch, axis)
        scale, states, steps = self.carry_scale, [], []
        for t, p in enumerate(axis.parent.tolist()):
            s_parent = states[p] if p >= 0 else None
            prior = self.carry.prior(mem, t, s_parent) if look_back and scale else None
            if prior is not None:
                prior_value, prior_support, prior_kept = self._cut(prior, scale)
                u = code_at(t, (prior_value, prior_support))
            else:
                u, prior_kept = code_at(t, None), None
            raw = self.carry.carried(mem, t, s_parent, u) if scale else None
            if raw is None:
                carried, support = torch.zeros_like(u), torch.zeros_like(u, dtype=torch.bool)
                cut = support
            else:
                carried, support, cut = self._cut(raw, scale, None if kept is None else kept[:, t])
            state = carried + u
            self.carry.remember(mem, t, u, state)
            states.append(state)
            if "prior_kept" in record and prior_kept is None:
                prior_kept = torch.zeros_like(support)
            steps.append((state, carried, support | (u != 0) if "state_support" in record else None, support, cut,
                          prior_kept))
        return _Walk.stack(steps, record)

    def forward(self, x: Tensor, axis: ContextAxis | None = None, reference: bool = False) -> SAEOutput:
        """Windows x (B, T, D) walked along `axis` -> SAEOutput. `reference` runs the plain
        dense-autograd path (for tests)."""
        self.check_input(x)
        if axis is None:
            raise InputError("a contextual SAE needs a context axis: pass --axis tokens, raster or quadtree")
        return self._run(axis.expand(x), axis, reference, slice(axis.n_steps - axis.n_inputs, None))

    def forward_steps(self, xs: Tensor, axis: ContextAxis, reference: bool = False) -> SAEOutput:
        """Like `forward`, on values already expanded to the axis's steps, xs (B, S, D) raw
        units; state and x_hat are returned at every step."""
        return self._run(xs, axis, reference, slice(None))

    def _code(self, xs: Tensor, axis: ContextAxis, reference: bool,
              record: tuple[str, ...] = _Walk._fields) -> tuple[_Walk, Tensor, list[Tensor], list[Tensor]]:
        """One walk that codes each step against its prior: (walk, pre-activations (B, S, F),
        and per step the innovations (B, F) and encoder inputs (B, D)). With autograd unless run
        under no_grad."""
        act = self.activation
        encode = act.encode_reference if reference else act.encode
        plain = not (reference or torch.is_grad_enabled())  # no autograd: codes straight from pre
        innovations, pre_acts, enc_ins = [], [], []

        def code_at(t: int, prior: tuple[Tensor, Tensor] | None) -> Tensor:
            centred = xs[:, t] - self.b_dec_D
            enc_in = centred
            if prior is not None:
                enc_in = _bounded(centred - self._project(prior[0], reference, prior[1]), centred)
            if plain:
                pre = F.linear(enc_in, self.W_enc_FD, self.b_enc_F)
                u = act.codes(pre)
            else:
                enc = encode(enc_in, self.W_enc_FD, self.b_enc_F, False)
                pre, u = enc.pre, enc.dense
            innovations.append(u)
            pre_acts.append(pre)
            enc_ins.append(enc_in)
            return u

        walk = self._walk(axis, xs.shape[0], code_at, record=record)
        return walk, torch.stack(pre_acts, 1), innovations, enc_ins

    def _replay(self, xs: Tensor, axis: ContextAxis, first: _Walk, pre: Tensor) -> tuple[_Walk, Tensor, Tensor]:
        """The walk again with autograd, for a carry that replays in one batch: every step's
        prior (from the recorded parent states, held fixed), encoder input and innovations (one
        batched encoder call on the recorded pre-activations), then the carry over them with
        the recorded cut decisions. Returns (walk, innovations (B, S, F), encoder inputs (B, S, D))."""
        b, s, d = xs.shape
        f, scale = self.config.width, self.carry_scale
        centred = xs - self.b_dec_D
        support = first.carried_support  # (B, S, F): entries of the parent's state, carried at all
        rows, cols = support.reshape(b * s, f).nonzero(as_tuple=True)
        parent = axis.parent.clamp(min=0)[rows % s]
        prior = scale * self.carry.replay_prior(cols, first.states[rows // s, parent, cols])
        kept = first.prior_kept.reshape(b * s, f)[rows, cols]
        prior = torch.where(kept, prior, prior - prior.detach())  # the cut, as `_cut` makes it
        projection = SparseCodes(rows, cols, prior, b * s, f).decode(self.W_dec_FD).reshape(b, s, d)
        enc_in = _bounded(centred - projection, centred)  # == centred where nothing was carried
        enc = self.activation.encode(enc_in.reshape(b * s, d), self.W_enc_FD, self.b_enc_F, False,
                                     pre=pre.reshape(b * s, -1))
        innovations = enc.dense.reshape(b, s, -1)
        carried, state = self.carry.replay(innovations, enc.sparse, first.kept, support, (rows, cols),
                                           axis.parent.tolist(), scale)
        walk = _Walk(state, carried, support | (innovations != 0), support, first.kept, first.prior_kept)
        return walk, innovations, enc_in

    def _run(self, xs_raw: Tensor, axis: ContextAxis, reference: bool, out_steps: slice) -> SAEOutput:
        """`out_steps`: the steps whose state and reconstruction are returned (input positions
        are the last T steps of every axis)."""
        xs = xs_raw * self.act_scale  # (B, S, D)
        if reference or not torch.is_grad_enabled() or not self.carry.batched or not self.carry_scale:
            walk, pre, innovations, enc_in = self._code(xs, axis, reference)
            innovations, enc_in = torch.stack(innovations, 1), torch.stack(enc_in, 1)
        else:
            with torch.no_grad():
                first, pre, _, _ = self._code(xs, axis, reference,
                                                record=("states", "carried_support", "kept", "prior_kept"))
            walk, innovations, enc_in = self._replay(xs, axis, first, pre)
        state, support = walk.states[:, out_steps], walk.state_support[:, out_steps]  # (B, T, F)
        f = state.shape[-1]
        recon = self._project(state.reshape(-1, f), reference, support.reshape(-1, f)).reshape(*state.shape[:2], -1)
        x_hat = (recon + self.b_dec_D) / self.act_scale
        return SAEOutput(x_hat, innovations, state, pre, enc_in, walk.carried, walk.carried_support)

    def carry_loss(self, x: Tensor, out: SAEOutput, axis: ContextAxis | None) -> Tensor:
        """carry_coeff * mean over steps with a parent of ||x_t - b_dec - W_dec carried_t||^2
        (normalised units): the carry alone should predict what persists, so persistence and
        resets learn from every step, not only where the encoder fails to top a feature up."""
        if self.config.carry_coeff == 0 or axis is None:
            return x.new_zeros(())
        has_parent = axis.parent >= 0
        xs = (axis.expand(x) * self.act_scale)[:, has_parent]  # (B, S', D)
        f = out.carried.shape[-1]
        carried = out.carried[:, has_parent].reshape(-1, f)
        support = out.carried_support[:, has_parent].reshape(-1, f)
        pred = self._project(carried, False, support).reshape(xs.shape) + self.b_dec_D
        return self.config.carry_coeff * (xs - pred).pow(2).sum(-1).mean()

    def propagate(self, innovations: Tensor, axis: ContextAxis) -> Tensor:
        """The state (B, T, F) that innovations (B, S, F) give, from codes alone: what the
        decoder would use if these features had fired. Equals `forward(x).state` for the
        innovations that `forward(x)` codes."""
        per_step = innovations.unbind(1)
        walk = self._walk(axis, innovations.shape[0], lambda t, prior: per_step[t], look_back=False)
        return walk.states[:, axis.input_step]

    def encode(self, x: Tensor, axis: ContextAxis) -> tuple[Tensor, Tensor]:
        """Raw windows (B, T, D) -> (innovations (B, S, F), state (B, T, F))."""
        out = self.forward(x, axis)
        return out.innovations, out.state

    def decode(self, state: Tensor) -> Tensor:
        """State (..., F) -> reconstruction (..., D), raw units: codes are all it reads."""
        return self.decode_codes(state)

    def output_steps(self, out: SAEOutput) -> Tensor | slice:
        s, t = out.innovations.shape[1], out.x_hat.shape[1]
        return slice(s - t, s)  # input positions are the last T steps of every axis
