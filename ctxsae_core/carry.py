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

_ATTENTION_INIT_LOGIT = 4.0  # attention weights start at sigmoid(4) = 0.98: the persistences decide
_PERSISTENCE_HEADROOM = 1.1  # sigmoid(persistence) >= 1/1.1 (persistence >= 2.3) carries exactly


def persistence_gate(persistence: Tensor) -> Tensor:
    """(F,) gate of each feature when nothing resets it: sigmoid(persistence) * 1.1, capped at
    1 (gradient straight through the cap), so a feature can persist exactly, without decay."""
    g = torch.sigmoid(persistence) * _PERSISTENCE_HEADROOM
    return torch.where(g > 1.0, g - (g.detach() - 1.0), g)


class Carry(nn.Module):
    # True for the gated carry, whose walk over sparse states (O(state size) entries a step) is
    # written out by hand in `ctxsae_core.sparse_walk`, from its `sparse_parts`
    sparse_state = False

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
        fired, as (value, support) before the model's cut. Its gradient, through the encoder's
        input, reaches earlier steps' codes. The gated carry needs that: with the prior's
        gradient stopped at the parent's state, training on the synthetic benchmark blew up at
        k 8 once the carry came on (held-out FVU 0.59, where backpropagating through reaches
        0.08), although k 4 and 6 trained as well either way."""
        return self.carried(mem, t, s_parent, None)


@CARRIES.decorator("gated")
class GatedCarry(Carry):
    """s_carried = g_t * s_parent with g_t = persistence_gate * exp(-reset(u_t)): each
    feature has a learned persistence, and features firing at t reset others through a
    non-negative low-rank map, reset(u) = (u A) B with A (F, r), B (r, F) >= 0.

    The product form keeps a reset's gradient (-g) strong even for a feature whose persistence
    is nearly 1; a single sigmoid(persistence - reset) saturates exactly there."""

    sparse_state = True

    def __init__(self, cfg: ContextualConfig):
        super().__init__(cfg)
        f, r = cfg.width, cfg.reset_rank
        self.persistence = nn.Parameter(torch.full((f,), float(cfg.init_persistence)))
        self.reset_in_raw = nn.Parameter(cfg.init_reset + 0.5 * torch.randn(f, r))
        self.reset_out_raw = nn.Parameter(cfg.init_reset + 0.5 * torch.randn(r, f))

    def _parts(self) -> tuple[Tensor, Tensor, Tensor]:
        """A (F, r), B (r, F), both >= 0, and the persistence gates (F,)."""
        return F.softplus(self.reset_in_raw), F.softplus(self.reset_out_raw), persistence_gate(self.persistence)

    def begin(self, batch: int, axis: ContextAxis) -> object:
        return self._parts()

    def sparse_parts(self) -> tuple[Tensor, Tensor, Tensor]:
        """For `ctxsae_core.sparse_walk`: the gates (F,), A (F, r), and B transposed to (F, r)
        and contiguous (its rows are gathered at every step)."""
        reset_in, reset_out, gate = self._parts()
        return gate, reset_in, reset_out.T.contiguous()

    def carried(self, mem, t, s_parent, u_t):
        if s_parent is None:
            return None
        gate = mem[2] if u_t is None else self._gates(mem, u_t)
        return self.hard(gate) * s_parent, s_parent != 0

    def gates(self, u_t: Tensor) -> Tensor:
        """(B, F) gates after innovations u_t fire, for analysis."""
        return self._gates(self._parts(), u_t)

    @staticmethod
    def _gates(parts: tuple[Tensor, Tensor, Tensor], u_t: Tensor) -> Tensor:
        """(B, F): persistence times the resets that dense innovations u_t (B, F) drive."""
        reset_in, reset_out, gate = parts
        return gate * torch.exp(-(u_t @ reset_in) @ reset_out)


@dataclass
class _AttentionMemory:
    positions: Tensor  # (S, P)
    mix: Tensor  # (H, F): how each feature mixes the heads
    last_step: Tensor  # (B, F) long: the step at which each feature last fired, -1 if never
    last_value: Tensor  # (B, F): the feature's state value at that step
    gate: Tensor  # (F,) hard persistence gates, the decay per step since a feature fired
    keys: Tensor | None = None  # (B, H, steps so far, dh); grown by cat (one autograd node a step)
    query_step: int = -1
    query_base: Tensor | None = None  # (B, H * dh) query from step query_step's position and parent
    prior_weight: Tensor | None = None  # (B, F) weights for query_base: the cap on what u_t may carry
    decay_step: int = -1
    decay: Tensor | None = None  # (B, F) gate ** age at step decay_step, shared by `prior` and `carried`


@CARRIES.decorator("attention")
class AttentionCarry(Carry):
    """Causal attention over past codes: feature f, last fired at step j < t with state value
    v, is carried as hard(sum_h mix[h, f] a[h, t, j]) * hard(gate_f) ** (t - j) * v, where
    a[h, t, j] = sigmoid(q_t . k_j / sqrt(dh) + b_h); queries read the parent's state, u_t and
    t's position; keys read u_j and j's position; gate_f is the feature's persistence, as in
    the gated carry. Codes and positions only, so the decoder still reads codes only; the
    value is the feature's own earlier state, so a carried feature stays a row of the one
    dictionary and is never counted twice.

    (t - j counts steps in the axis's walk order.) The persistence decay is what stopped this
    carry blowing up when it switches on in training. Without it every feature that had
    fired anywhere earlier in the window was carried at its full attention weight, and the
    weight is shared by all features last fired at the same step: on the synthetic regions
    the state jumped to 113 codes a position (22 innovations) within 20 steps of the carry
    switching on, the training MSE from 0.45 to 14.7, and the dictionary never recovered.
    The attention starts open (b_h = 4), so the persistences learn first, feature by feature,
    as the gated carry's do; the attention can then lower what chosen steps carry.

    What step t's innovations carry is capped at the prior the encoder coded against (the
    weight without u_t): firing features may lower what is carried, as the gated carry's
    resets do, but never raise it, so the state cannot overshoot what the encoder saw. (The
    cap alone did not stop this carry from diverging; holding earlier codes fixed in `prior` did.)"""

    def __init__(self, cfg: ContextualConfig, n_position_features: int = 24):
        super().__init__(cfg)
        f, hd = cfg.width, cfg.heads * cfg.head_dim
        scale = 1 / math.sqrt(f)
        self.W_q_state = nn.Parameter(scale * torch.randn(f, hd))
        self.W_q_new = nn.Parameter(scale * torch.randn(f, hd))
        self.W_k = nn.Parameter(scale * torch.randn(f, hd))
        self.P_q = nn.Parameter(0.1 * torch.randn(n_position_features, hd))
        self.P_k = nn.Parameter(0.1 * torch.randn(n_position_features, hd))
        self.bias = nn.Parameter(torch.full((cfg.heads,), _ATTENTION_INIT_LOGIT))
        self.persistence = nn.Parameter(torch.full((f,), float(cfg.init_persistence)))
        self.mix_logits = nn.Parameter(torch.zeros(cfg.heads, f))

    def _pos(self, positions: Tensor, P: Tensor) -> Tensor:
        return positions.to(P.dtype) @ P[: positions.shape[-1]]  # axes have 8 to 24 position features

    def begin(self, batch: int, axis: ContextAxis) -> object:
        f = self.cfg.width
        return _AttentionMemory(axis.positions, torch.softmax(self.mix_logits, dim=0),
                                torch.full((batch, f), -1, dtype=torch.long), self.W_k.new_zeros(batch, f),
                                self.hard(persistence_gate(self.persistence)))

    def carried(self, mem: _AttentionMemory, t, s_parent, u_t):
        if mem.keys is None:
            return None
        if mem.query_step != t:  # the part of the query both calls at step t share
            mem.query_step, mem.query_base = t, self._query(mem, t, s_parent)
            mem.prior_weight = self._weight(mem, mem.query_base)
        weight = mem.prior_weight
        if u_t is not None:
            weight = torch.minimum(weight, self._weight(mem, mem.query_base + u_t @ self.W_q_new))
        return self.hard(weight) * self._decay(mem, t) * mem.last_value, mem.last_step >= 0

    def prior(self, mem, t, s_parent):
        """Unlike the gated carry's, this prior holds earlier codes fixed: the query reads the
        parent's state without gradient, and the keys and carried values are the memory's,
        detached; the prior's gradient reaches the query's parameters and the dictionary.
        Backpropagating the encoder's input into earlier steps through this carry blows the
        gradients up (W_dec's to 8.6e5, against 11 here, on the tests' random model in float64), and it diverged on
        every benchmark while it did."""
        if mem.keys is None:
            return None
        q = self._query(mem, t, None if s_parent is None else s_parent.detach())
        weight = self._weight(mem, q, mem.keys.detach())
        return self.hard(weight) * self._decay(mem, t) * mem.last_value.detach(), mem.last_step >= 0

    def _decay(self, mem: _AttentionMemory, t: int) -> Tensor:
        """(B, F): hard(persistence gate) ** (steps since the feature last fired), once a step."""
        if mem.decay_step != t:
            age = (t - mem.last_step).clamp(min=1).to(mem.last_value.dtype)
            mem.decay_step, mem.decay = t, mem.gate ** age
        return mem.decay

    def _query(self, mem: _AttentionMemory, t: int, s_parent: Tensor | None) -> Tensor:
        """(B, H * dh): the query from step t's position and the parent's state, before u_t."""
        q = self._pos(mem.positions[t], self.P_q)
        if s_parent is not None:
            q = q + s_parent @ self.W_q_state
        return q.expand(mem.last_step.shape[0], -1)

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
