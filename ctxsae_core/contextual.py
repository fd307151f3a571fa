"""The contextual SAE: each step pays only for what is new against what the state carries.

Walking the axis in causal order, at step t with parent p:

    prior_t = carry(codes < t, u_t = None)          what would be carried if nothing new fired
    u_t     = act(W_enc (x_t - b_dec - W_dec prior_t) + b_enc)      innovations (paid for)
    s_t     = carry(codes < t, u_t) + u_t                           state (what the decoder uses)
    x_hat_t = W_dec s_t + b_dec

With `signed`, a carried feature's innovation may be negative, down to minus its prior value
(`_signed_codes`): the activation picks the largest magnitudes, so one paid code lowers or ends
a carried feature. Resets are driven by the positive innovations, and the state is kept >= 0.

The encoder looks back through the prior; the decoder reads codes only (docs/design.md, invariant
1), every step depends on earlier steps only (2), carried codes are rows of the one
dictionary (3), and `SAEOutput` keeps innovations and state apart (4)."""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ctxsae_core.activations import project, use_sparse_path
from ctxsae_core.axes import ContextAxis
from ctxsae_core.carry import Carry, make_carry
from ctxsae_core.config import ContextualConfig
from ctxsae_common.errors import InputError
from ctxsae_core.registry import ARCHITECTURES
from ctxsae_core.sae import BaseSAE, Built, SAEOutput
from ctxsae_core.sparse_ops import decode_steps, steps_features, steps_support, steps_to_dense
from ctxsae_core.sparse_walk import WalkSpec, bounded, gated_walk


def _input_steps(axis: ContextAxis) -> slice:
    """The steps at which the input positions are visited: the last T of every axis."""
    return slice(axis.n_steps - axis.n_inputs, None)


class _Walk(NamedTuple):
    """A walk's per-step results, each (B, S, F)."""

    states: Tensor
    carried: Tensor
    state_support: Tensor  # bool: entries the decoder differentiates (cut ones included)
    carried_support: Tensor  # bool: entries carried at all


class _Codes(NamedTuple):
    """What a walk gives `SAEOutput`: tensors, or functions building them (`Built`)."""

    innovations: Built  # (B, S, F)
    state: Built  # (B, T', F) at the output steps
    pre_acts: Built  # (B, S, F)
    carried: Built  # (B, S, F)
    carried_support: Built  # (B, S, F) bool
    fired: Built | None  # (F,) bool, features with an innovation; None: from the innovations
    sample: Tensor | None = None  # `SAEOutput.statistics_sample`


class _Decoded(NamedTuple):
    """What `_run` decodes, in normalised units without b_dec, with autograd."""

    recon: Tensor  # (B, T, D): W_dec state at the output steps
    carried: Tensor | None  # (B, S, D): W_dec carried (None when the carry loss is off)


@ARCHITECTURES.decorator("contextual")
class ContextualSAE(BaseSAE):
    """The contextual SAE of the module docstring, over any carry and activation."""

    config: ContextualConfig
    has_carry = True

    def __init__(self, config: ContextualConfig):
        super().__init__(config)
        self.carry: Carry = make_carry(config)
        self.carry_scale: float = 1.0  # 0: the carry is off (`set_carry_`); not saved

    def set_carry_(self, on: bool) -> None:
        """Switch the carry on or off (the trainer's carry warm-up)."""
        self.carry_scale = 1.0 if on else 0.0

    def param_groups(self, lr: float) -> list[dict]:
        """The carry's parameters get carry_lr_scale times the learning rate (their group is marked
        `carry`, for the trainer's `TrainConfig.carry_freeze_at_decay`)."""
        carry = list(self.carry.parameters())
        ids = {id(p) for p in carry}
        rest = [p for p in self.parameters() if id(p) not in ids]
        scale = self.config.carry_lr_scale
        return [{"params": rest, "lr": lr, "lr_scale": 1.0}, {"params": carry, "lr": lr * scale, "lr_scale": scale,
                                                            "carry": True}]

    def _project(self, codes: Tensor, dense: bool, support: Tensor | None = None) -> Tensor:
        """W_dec codes (no bias), normalised units, reading only the rows of `support` (default:
        the non-zero codes) on the sparse path (`activations.project`)."""
        if dense or not self.activation.sparse_grad:
            return codes @ self.W_dec_FD
        return project(codes, self.W_dec_FD, support)

    def _cut(self, c: Tensor, support: Tensor, scale: float) -> Tensor:
        """Carried values `c` (scaled by `scale`) below carry_threshold become exactly zero, so
        state L0 counts no dust. The gradient passes straight through the cut for entries
        carried at all (the support), so a feature whose carried value is still below it learns
        whether carrying more would help; otherwise a low persistence could never grow. (The
        sparse walk, whose entries are all carried, cuts the same way: `sparse_walk._cut`.)"""
        if scale != 1.0:
            c = scale * c
        kept = c > self.config.carry_threshold
        if not c.requires_grad:
            return c.masked_fill(~kept, 0.0)
        ste = torch.where(support, c - c.detach(), c.new_zeros(()))  # zero, with gradient
        return torch.where(kept, c, ste)

    def _walk(self, axis: ContextAxis, batch: int, code_at: Callable[[int, Tensor | None], Tensor],
              look_back: bool = True) -> _Walk:
        """Walk the axis; `code_at(t, prior)` supplies step t's innovations, given the cut prior
        (value, support) when `look_back` (None at steps with nothing carried)."""
        mem = self.carry.begin(batch, axis)
        scale, steps, signed = self.carry_scale, [], self.config.signed
        for t, p in enumerate(axis.parent.tolist()):
            s_parent = steps[p][0] if p >= 0 else None
            prior = self.carry.prior(mem, t, s_parent) if look_back and scale else None
            u = code_at(t, None if prior is None else (self._cut(*prior, scale), prior[1]))
            raw = self.carry.carried(mem, t, s_parent, u.clamp_min(0) if signed else u) if scale else None
            if raw is None:
                carried, support = torch.zeros_like(u), torch.zeros_like(u, dtype=torch.bool)
            else:
                carried, support = self._cut(*raw, scale), raw[1]
            state = carried + u
            if signed:  # a reset may have carried less than the prior a negative innovation cancels
                state = state.clamp_min(0)
            self.carry.remember(mem, t, u, state)
            steps.append((state, carried, support | (u != 0), support))
        return _Walk(*(torch.stack(column, 1) for column in zip(*steps)))

    def _walks_sparse(self, batch: int, reference: bool) -> bool:
        """Whether a forward pass walks sparse states: a carry and activation that allow it, and
        enough work that the small kernels pay (the same rule as the encoder's sparse path)."""
        return (not reference and not self.config.signed and self.carry.sparse_state and self.activation.sparse_grad
                and use_sparse_path(batch, self.W_dec_FD))

    def forward(self, x: Tensor, axis: ContextAxis | None = None, reference: bool = False) -> SAEOutput:
        """Windows x (B, T, D) walked along `axis` -> SAEOutput. `reference` runs the plain
        dense-autograd path (for tests)."""
        self.check_input(x)
        if axis is None:
            raise InputError("a contextual SAE needs a context axis: pass --axis tokens, raster or quadtree")
        return self._run(axis.expand(x), axis, reference, _input_steps(axis))

    def forward_steps(self, xs: Tensor, axis: ContextAxis, reference: bool = False) -> SAEOutput:
        """Like `forward`, on values already expanded to the axis's steps, xs (B, S, D) raw
        units; state and x_hat are returned at every step."""
        return self._run(xs, axis, reference, slice(None))

    def _run(self, xs_raw: Tensor, axis: ContextAxis, reference: bool, out_steps: slice) -> SAEOutput:
        """`out_steps`: the steps whose state and reconstruction are returned."""
        xs = xs_raw * self.act_scale  # (B, S, D)
        run = self._run_sparse if self._walks_sparse(xs.shape[0], reference) else self._run_dense
        codes, decoded, enc_in = run(axis, xs, out_steps, reference)
        x_hat = (decoded.recon + self.b_dec_D) / self.act_scale
        return SAEOutput(x_hat, codes.innovations, codes.state, codes.pre_acts, enc_in,
                         codes.carried, codes.carried_support, decoded.carried, codes.fired, codes.sample)

    def _run_sparse(self, axis: ContextAxis, xs: Tensor, out_steps: slice,
                    reference: bool = False) -> tuple[_Codes, _Decoded, Tensor]:
        """The gated carry's walk over sparse states of windows xs (B, S, D) (normalised
        units), one autograd Function (`ctxsae_core.sparse_walk`); the dense codes are built
        only if read. Returns the encoder's inputs (B, S, D) too."""
        gate, reset_in, reset_out_T = self.carry.sparse_parts(axis)
        sample: list[Tensor] = []
        spec = WalkSpec(axis.parent.tolist(), self.carry_scale, self.config.carry_threshold, self.config.gate_floor,
                        lambda pre: self.activation.select_sampling(pre, False, sample))
        walk = gated_walk(spec, xs, self.b_dec_D, self.W_dec_FD, self.W_enc_FD, self.b_enc_F, gate, reset_in,
                          reset_out_T)
        states = walk.states[out_steps]
        codes = _Codes(lambda: steps_to_dense(walk.innovations), lambda: steps_to_dense(states), walk.pre_acts,
                       lambda: steps_to_dense(walk.carried), lambda: steps_support(walk.carried),
                       lambda: steps_features(walk.innovations), torch.cat(sample) if sample else None)
        decoded = _Decoded(decode_steps(states, self.W_dec_FD),
                           decode_steps(walk.carried, self.W_dec_FD) if self.config.carry_coeff else None)
        return codes, decoded, walk.enc_in

    def _run_dense(self, axis: ContextAxis, xs: Tensor, out_steps: slice,
                   reference: bool) -> tuple[_Codes, _Decoded, Tensor]:
        """The walk over dense (B, F) states of windows xs (B, S, D): any carry and activation,
        and the reference path. Returns the encoder's inputs (B, S, D) too."""
        act = self.activation
        encode = act.encode_reference if reference else act.encode
        plain = not (reference or torch.is_grad_enabled())  # no autograd: codes straight from pre
        innovations, pre_acts, enc_ins = [], [], []

        def code_at(t: int, prior: tuple[Tensor, Tensor] | None) -> Tensor:
            """Step t's innovations, coded against its centred input minus the prior projected
            onto the dictionary (bounded, `sparse_walk.bounded`, unless signed)."""
            enc_in = centred = xs[:, t] - self.b_dec_D
            if prior is not None:
                enc_in = centred - self._project(prior[0], reference, prior[1])
                if not self.config.signed:  # signed codes can lower an overshoot, so they need no bound
                    enc_in = bounded(enc_in, centred)
            enc_ins.append(enc_in)
            if self.config.signed and prior is not None:
                pre, u = self._signed_codes(enc_in, prior[0])
            elif plain:
                pre = F.linear(enc_in, self.W_enc_FD, self.b_enc_F)
                u = act.codes(pre)
            else:
                enc = encode(enc_in, self.W_enc_FD, self.b_enc_F, False)
                pre, u = enc.pre, enc.dense
            innovations.append(u)
            pre_acts.append(pre)
            return u

        walk = self._walk(axis, xs.shape[0], code_at)
        decoded = _Decoded(self._decode_dense(walk.states[:, out_steps], walk.state_support[:, out_steps], reference),
                           self._decode_dense(walk.carried, walk.carried_support, reference)
                           if self.config.carry_coeff else None)
        codes = _Codes(torch.stack(innovations, 1), walk.states[:, out_steps], lambda: torch.stack(pre_acts, 1),
                       walk.carried, walk.carried_support, None)
        return codes, decoded, torch.stack(enc_ins, 1)

    def _signed_codes(self, enc_in: Tensor, prior: Tensor) -> tuple[Tensor, Tensor]:
        """(score, u) of one step with signed innovations, (B, F) each. A carried feature (prior
        value c > 0) codes a change v = max(pre, -c), scored by its magnitude; any other feature
        codes v = pre, scored by it. The activation selects on the scores, so they are the
        step's pre-activations (its threshold statistics, AuxK) and u is v where selected."""
        pre = F.linear(enc_in, self.W_enc_FD, self.b_enc_F)
        carried = prior > 0
        v = torch.where(carried, torch.maximum(pre, -prior), pre)
        score = torch.where(carried, v.abs(), v)
        fire = self.activation.codes(score.detach()) != 0
        u = torch.where(fire, v, v.new_zeros(()))
        return score, u

    def _decode_dense(self, codes: Tensor, support: Tensor, reference: bool) -> Tensor:
        """W_dec codes for dense codes (B, S, F) -> (B, S, D), normalised units, no b_dec."""
        f = codes.shape[-1]
        return self._project(codes.reshape(-1, f), reference, support.reshape(-1, f)).reshape(*codes.shape[:2], -1)

    def carry_loss(self, x: Tensor, out: SAEOutput, axis: ContextAxis | None) -> Tensor:
        """carry_coeff * mean over steps with a parent of ||x_t - b_dec - W_dec carried_t||^2
        (normalised units): the carry alone should predict what persists, so persistence and
        resets learn from every step, not only where the encoder fails to top a feature up."""
        if self.config.carry_coeff == 0 or axis is None:
            return x.new_zeros(())
        has_parent = (axis.parent >= 0).to(x.device)
        xs = (axis.expand(x) * self.act_scale)[:, has_parent]  # (B, S', D)
        pred = out.carried_decoded[:, has_parent] + self.b_dec_D
        return self.config.carry_coeff * (xs - pred).pow(2).sum(-1).mean()

    def propagate(self, innovations: Tensor, axis: ContextAxis) -> Tensor:
        """The state (B, T, F) that innovations (B, S, F) give, from codes alone: what the
        decoder would use if these features had fired. Equals `forward(x).state` for the
        innovations that `forward(x)` codes."""
        per_step = innovations.unbind(1)
        walk = self._walk(axis, innovations.shape[0], lambda t, prior: per_step[t], look_back=False)
        return walk.states[:, _input_steps(axis)]

    def encode(self, x: Tensor, axis: ContextAxis) -> tuple[Tensor, Tensor]:
        """Raw windows (B, T, D) -> (innovations (B, S, F), state (B, T, F))."""
        out = self.forward(x, axis)
        return out.innovations, out.state

    def decode(self, state: Tensor) -> Tensor:
        """State (..., F) -> reconstruction (..., D), raw units: codes are all it reads."""
        return self.decode_codes(state)

    def output_steps(self, out: SAEOutput) -> Tensor | slice:
        """The steps of the input positions: the last T of every axis."""
        s, t = out.innovations.shape[1], out.x_hat.shape[1]
        return slice(s - t, s)  # input positions are the last T steps of every axis
