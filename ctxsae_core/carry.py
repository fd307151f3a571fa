"""Carries: how a contextual SAE's state reaches a step from the codes before it.

A carry sees codes and positions only, never activations, so the reconstruction stays a
function of the codes (DESIGN.md, invariant 1). Called with the step's innovations `u_t`, it
gives what the state carries into the step; called with `u_t=None`, it gives the prior the
encoder codes against (what would be carried if nothing new fired). The model then cuts
carried values below `carry_threshold` to exactly zero (`ContextualSAE`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ctxsae_core.axes import ContextAxis
from ctxsae_core.config import ContextualConfig
from ctxsae_core.registry import CARRIES
from ctxsae_core.sparse_ops import SparseCodes

_PERSISTENCE_HEADROOM = 1.1  # sigmoid(persistence) >= 1/1.1 (persistence >= 2.3) carries exactly


class Carry(nn.Module):
    def __init__(self, cfg: ContextualConfig):
        super().__init__()
        self.cfg = cfg

    def begin(self, batch: int, axis: ContextAxis) -> object:
        """Memory for one walk over a batch of windows."""
        return None

    def carried(self, mem: object, t: int, s_parent: Tensor | None,
                u_t: Tensor | None) -> tuple[Tensor, Tensor] | None:
        """(value, support), both (B, F): the codes carried into step t (before the model's cut)
        and the entries carried at all, including hard-reset ones whose value is zero but whose
        gradient is not; None when nothing can be carried."""
        raise NotImplementedError

    def hard(self, g: Tensor) -> Tensor:
        """Gates below gate_floor become exactly 0 (a hard reset); the gradient passes straight
        through, so a feature can still learn that it should have been kept."""
        if not g.requires_grad:
            return g.masked_fill(g < self.cfg.gate_floor, 0.0)
        return torch.where(g >= self.cfg.gate_floor, g, g - g.detach())

    def remember(self, mem: object, t: int, u_t: Tensor, s_t: Tensor) -> None:
        """Record step t's innovations and state, both (B, F), for later steps."""

    def prior(self, mem: object, t: int, s_parent: Tensor | None) -> tuple[Tensor, Tensor] | None:
        """The prior the encoder codes step t against: what would be carried if nothing new
        fired, as (value, support) before the model's cut."""
        return self.carried(mem, t, s_parent, None)

    # A carry that can replay a finished walk in one batch (training's fast path) sets this and
    # implements `replay_prior` and `replay`; otherwise training walks step by step with autograd.
    batched = False

    def replay_prior(self, cols: Tensor, parent_values: Tensor) -> Tensor:
        """`prior` for many carried entries at once: features `cols`, the parent's state there
        `parent_values` (held fixed)."""
        raise NotImplementedError

    def replay(self, innovations: Tensor, codes: SparseCodes | None, kept: Tensor, support: Tensor,
               entries: tuple[Tensor, Tensor], parent: list[int], scale: float) -> tuple[Tensor, Tensor]:
        """(carried, state), both (B, S, F) with autograd, for innovations (B, S, F) whose walk
        has been run already (`codes`: the same innovations as (B * S) rows of sparse codes, when
        the activation has them): `kept` and `support` (B, S, F) are that walk's cut decisions
        and carried entries, `entries` the (row, feature) indices of `support` over B * S rows."""
        raise NotImplementedError


@CARRIES.decorator("gated")
class GatedCarry(Carry):
    """s_carried = g_t * s_parent with g_t = persistence_gate * exp(-reset(u_t)): each
    feature has a learned persistence, and features firing at t reset others through a
    non-negative low-rank map, reset(u) = (u A) B with A (F, r), B (r, F) >= 0.

    The product form keeps a reset's gradient (-g) strong even for a feature whose persistence
    is nearly 1; a single sigmoid(persistence - reset) saturates exactly there."""

    def __init__(self, cfg: ContextualConfig):
        super().__init__(cfg)
        f, r = cfg.width, cfg.reset_rank
        self.persistence = nn.Parameter(torch.full((f,), float(cfg.init_persistence)))
        self.reset_in_raw = nn.Parameter(cfg.init_reset + 0.5 * torch.randn(f, r))
        self.reset_out_raw = nn.Parameter(cfg.init_reset + 0.5 * torch.randn(r, f))

    def begin(self, batch: int, axis: ContextAxis) -> object:
        return (F.softplus(self.reset_in_raw), F.softplus(self.reset_out_raw), self.persistence_gate())

    def persistence_gate(self) -> Tensor:
        """(F,) gate of each feature when nothing resets it: sigmoid(persistence) * 1.1, capped at
        1 (gradient straight through the cap), so a feature can persist exactly, without decay."""
        g = torch.sigmoid(self.persistence) * _PERSISTENCE_HEADROOM
        return torch.where(g > 1.0, g - (g.detach() - 1.0), g)

    def carried(self, mem, t, s_parent, u_t):
        if s_parent is None:
            return None
        reset_in, reset_out, gate = mem
        if u_t is not None:
            gate = gate * torch.exp(-(u_t @ reset_in) @ reset_out)  # (B, F)
        return self.hard(gate) * s_parent, s_parent != 0

    batched = True

    def prior(self, mem, t, s_parent):
        """The parent's state is held fixed here: the prior's gradient reaches the persistence
        (and, through the encoder's input, the dictionary) but not earlier steps' codes. That is
        what lets training replay every step in one batch. On the synthetic benchmark (k 6, same
        seed) it ends at held-out FVU 0.0998 after 3M tokens where backpropagating through the
        prior into earlier steps ended at 0.0946 (0.180 either way after 1M tokens); cutting the
        prior's gradient entirely costs more (0.19-0.20 after 1M)."""
        return self.carried(mem, t, None if s_parent is None else s_parent.detach(), None)

    def replay_prior(self, cols, parent_values):
        return self.hard(self.persistence_gate())[cols] * parent_values

    def gates(self, u_t: Tensor) -> Tensor:
        """(B, F) gates after innovations u_t fire, for analysis."""
        reset_in, reset_out = F.softplus(self.reset_in_raw), F.softplus(self.reset_out_raw)
        return self.persistence_gate() * torch.exp(-(u_t @ reset_in) @ reset_out)

    def replay(self, innovations, codes, kept, support, entries, parent, scale):
        """A gate depends on its step's innovations alone, so all gates come from one batched
        product, computed only where something is carried; what remains step by step is the
        linear recurrence s_t = cut(g_t s_parent) + u_t, in `_GatedRecurrence`, without an
        autograd node per step."""
        b, s, f = innovations.shape
        reset_in, reset_out = F.softplus(self.reset_in_raw), F.softplus(self.reset_out_raw)
        pressure = (codes.decode(reset_in) if codes is not None
                    else innovations.reshape(b * s, f) @ reset_in)  # (B * S, r): u_t A
        rows, cols = entries
        reset = (pressure[rows] * reset_out.T[cols]).sum(-1)  # (u_t A B) at the carried entries
        gate = self.hard(self.persistence_gate()[cols] * torch.exp(-reset))
        if scale != 1.0:
            gate = scale * gate
        gates = gate.new_zeros(b * s, f).index_put((rows, cols), gate).reshape(b, s, f)
        return _GatedRecurrence.apply(gates, innovations, kept, support, parent)


class _GatedRecurrence(torch.autograd.Function):
    """carried_t = kept_t * g_t * s_parent(t), s_t = carried_t + u_t, walked in step order;
    every parent comes before its children. The gradient passes straight through the cut for
    every carried entry (`support`), as `ContextualSAE._cut` defines it."""

    @staticmethod
    def forward(ctx, gates, innovations, kept, support, parent):  # type: ignore[override]
        carried = torch.zeros_like(innovations)
        state = innovations.clone()
        for t, p in enumerate(parent):
            if p >= 0:
                torch.mul(gates[:, t], state[:, p], out=carried[:, t])
                carried[:, t].masked_fill_(~kept[:, t], 0.0)
                state[:, t] += carried[:, t]
        ctx.save_for_backward(gates, state, support)
        ctx.parent = parent
        return carried, state

    @staticmethod
    def backward(ctx, d_carried, d_state):  # type: ignore[override]
        gates, state, support = ctx.saved_tensors
        g_state = d_state.clone()  # gradient reaching each state, children's added as we go back
        d_gates = torch.zeros_like(gates)
        for t in range(len(ctx.parent) - 1, -1, -1):
            p = ctx.parent[t]
            if p < 0:
                continue
            g = (d_carried[:, t] + g_state[:, t]) * support[:, t]
            torch.mul(g, state[:, p], out=d_gates[:, t])
            g_state[:, p].addcmul_(g, gates[:, t])
        return d_gates, g_state, None, None, None


@dataclass
class _AttentionMemory:
    positions: Tensor  # (S, P)
    mix: Tensor  # (H, F): how each feature mixes the heads
    last_step: Tensor  # (B, F) long: the step at which each feature last fired, -1 if never
    last_value: Tensor  # (B, F): the feature's state value at that step
    keys: Tensor | None = None  # (B, H, steps so far, dh); grown by cat (one autograd node a step)
    query_step: int = -1
    query_base: Tensor | None = None  # (B, H * dh) query from step query_step's position and parent
    prior_weight: Tensor | None = None  # (B, F) weights for query_base: the cap on what u_t may carry


@CARRIES.decorator("attention")
class AttentionCarry(Carry):
    """Causal attention over past codes: feature f, last fired at step j < t with state value
    v, is carried as hard(sum_h mix[h, f] a[h, t, j]) * v, where a[h, t, j] =
    sigmoid(q_t . k_j / sqrt(dh) + b_h); queries read the parent's state, u_t and t's
    position; keys read u_j and j's position. Codes and positions only, so the decoder still
    reads codes only; the value is the feature's own earlier state, so a carried feature stays
    a row of the one dictionary and is never counted twice.

    What step t's innovations carry is capped at the prior the encoder coded against (the
    weight without u_t): firing features may lower what is carried, as the gated carry's
    resets do, but never raise it, so the state cannot overshoot what the encoder saw. (The
    cap alone does not stop this carry from diverging on the synthetic benchmark: README.)"""

    def __init__(self, cfg: ContextualConfig, n_position_features: int = 24):
        super().__init__(cfg)
        f, hd = cfg.width, cfg.heads * cfg.head_dim
        scale = 1 / math.sqrt(f)
        self.W_q_state = nn.Parameter(scale * torch.randn(f, hd))
        self.W_q_new = nn.Parameter(scale * torch.randn(f, hd))
        self.W_k = nn.Parameter(scale * torch.randn(f, hd))
        self.P_q = nn.Parameter(0.1 * torch.randn(n_position_features, hd))
        self.P_k = nn.Parameter(0.1 * torch.randn(n_position_features, hd))
        self.bias = nn.Parameter(torch.full((cfg.heads,), float(cfg.init_persistence)))
        self.mix_logits = nn.Parameter(torch.zeros(cfg.heads, f))

    def _pos(self, positions: Tensor, P: Tensor) -> Tensor:
        return positions.to(P.dtype) @ P[: positions.shape[-1]]  # axes have 8 to 24 position features

    def begin(self, batch: int, axis: ContextAxis) -> object:
        f = self.cfg.width
        return _AttentionMemory(axis.positions, torch.softmax(self.mix_logits, dim=0),
                                torch.full((batch, f), -1, dtype=torch.long), self.W_k.new_zeros(batch, f))

    def carried(self, mem: _AttentionMemory, t, s_parent, u_t):
        if mem.keys is None:
            return None
        batch = mem.last_step.shape[0]
        if mem.query_step != t:  # the part of the query both calls at step t share
            q = self._pos(mem.positions[t], self.P_q)
            if s_parent is not None:
                q = q + s_parent @ self.W_q_state
            mem.query_step, mem.query_base = t, q.expand(batch, -1)
            mem.prior_weight = self._weight(mem, mem.query_base)
        weight = mem.prior_weight
        if u_t is not None:
            weight = torch.minimum(weight, self._weight(mem, mem.query_base + u_t @ self.W_q_new))
        return self.hard(weight) * mem.last_value, mem.last_step >= 0

    def prior(self, mem, t, s_parent):
        """Earlier codes are held fixed here, as in the gated carry's prior: the query reads the
        parent's state without gradient, and the keys and carried values are the memory's,
        detached; the prior's gradient reaches the query's parameters and the dictionary.
        Backpropagating the encoder's input into earlier steps through this carry blows the
        gradients up (W_dec's to about 1e6 on the tests' random model)."""
        if mem.keys is None:
            return None
        q = self._pos(mem.positions[t], self.P_q)
        if s_parent is not None:
            q = q + s_parent.detach() @ self.W_q_state
        weight = self._weight(mem, q.expand(mem.last_step.shape[0], -1), mem.keys.detach())
        return self.hard(weight) * mem.last_value.detach(), mem.last_step >= 0

    def _weight(self, mem: _AttentionMemory, q: Tensor, keys: Tensor | None = None) -> Tensor:
        """(B, F): each feature's attention weight to the step where it last fired, for queries q
        (and the memory's keys unless given)."""
        heads, dh = self.cfg.heads, self.cfg.head_dim
        q = q.reshape(q.shape[0], heads, dh)
        keys = mem.keys if keys is None else keys
        attn = torch.sigmoid(torch.einsum("bhd,bhjd->bhj", q, keys) / math.sqrt(dh) + self.bias[:, None])
        where = mem.last_step.clamp(min=0).unsqueeze(1).expand(-1, heads, -1)  # (B, H, F)
        return (attn.gather(2, where) * mem.mix).sum(1)

    def remember(self, mem: _AttentionMemory, t, u_t, s_t):
        key = (u_t @ self.W_k + self._pos(mem.positions[t], self.P_k)).reshape(u_t.shape[0], self.cfg.heads, 1, -1)
        mem.keys = key if mem.keys is None else torch.cat([mem.keys, key], dim=2)
        fired = u_t != 0
        mem.last_step = torch.where(fired, t, mem.last_step)
        mem.last_value = torch.where(fired, s_t, mem.last_value)


def make_carry(cfg: ContextualConfig) -> Carry:
    return CARRIES[cfg.carry](cfg)
