"""Carries: how a contextual SAE's state reaches a step from the codes before it.

A carry sees codes and positions only, never activations, so the reconstruction stays a
function of the codes (docs/design.md, invariant 1). Called with the step's innovations `u_t`, it
gives what the state carries into the step; called with `u_t=None`, it gives the prior the
encoder codes against (what would be carried if nothing new fired). The model then cuts
carried values below `carry_threshold` to exactly zero (`ContextualSAE`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ctxsae_core.axes import MAX_POSITION_FEATURES, ContextAxis
from ctxsae_core.config import ContextualConfig
from ctxsae_core.registry import CARRIES

_ATTENTION_INIT_LOGIT = 4.0  # attention weights start at sigmoid(4) = 0.98: the persistences decide
_PERSISTENCE_HEADROOM = 1.1  # sigmoid(persistence) >= 1/1.1 (persistence >= 2.3) carries exactly


def persistence_gate(persistence: Tensor) -> Tensor:
    """(F,) gate of each feature when nothing resets it: sigmoid(persistence) * 1.1, capped at
    1 (gradient straight through the cap), so a feature can persist exactly, without decay."""
    g = torch.sigmoid(persistence) * _PERSISTENCE_HEADROOM
    return torch.where(g > 1.0, g - (g.detach() - 1.0), g)


def project_positions(positions: Tensor, weight: Tensor) -> Tensor:
    """Position features (..., P) through the first P rows of a (MAX_POSITION_FEATURES, n) weight:
    an axis has 8 to MAX_POSITION_FEATURES of them, and one weight serves every axis."""
    return positions.to(weight) @ weight[: positions.shape[-1]]


def reset_parameters(cfg: ContextualConfig) -> tuple[nn.Parameter, nn.Parameter]:
    """The raw factors of a non-negative low-rank reset map, (F, r) and (r, F): see `reset_factors`."""
    f, r = cfg.width, cfg.reset_rank
    return (nn.Parameter(cfg.init_reset + 0.5 * torch.randn(f, r)),
            nn.Parameter(cfg.init_reset + 0.5 * torch.randn(r, f)))


def reset_factors(reset_in_raw: Tensor, reset_out_raw: Tensor) -> tuple[Tensor, Tensor]:
    """A (F, r), B (r, F), both >= 0: features firing as u reset feature f by (u A B)_f."""
    return F.softplus(reset_in_raw), F.softplus(reset_out_raw)


def reset_gates(gate: Tensor, A: Tensor, B: Tensor, u: Tensor) -> Tensor:
    """(B, F): persistence gates `gate` (F,) times the resets that dense innovations u (B, F) drive."""
    return gate * torch.exp(-(u @ A) @ B)


class Carry(nn.Module):
    # True for the gated carry, whose walk over sparse states (O(state size) entries a step) is
    # written out by hand in `ctxsae_core.sparse_walk`, from its `sparse_parts`
    """Base of the carries: memory for a walk, what is carried into each step, and the encoder's prior."""

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
        input, reaches earlier steps' codes: earlier codes then learn what later steps are coded
        against, which keeps training stable once the carry comes on."""
        return self.carried(mem, t, s_parent, None)


@CARRIES.decorator("gated")
class GatedCarry(Carry):
    """s_carried = g_t * s_parent with g_t = persistence_gate * exp(-reset(u_t)): each
    feature has a learned persistence, and features firing at t reset others through a
    non-negative low-rank map, reset(u) = (u A) B with A (F, r), B (r, F) >= 0.

    The product form keeps a reset's gradient (-g) strong even for a feature whose persistence
    is nearly 1; a single sigmoid(persistence - reset) saturates exactly there.

    With `position_gates`, the persistence logit of feature f at step t is persistence_f +
    (p_t W)_f, p_t the step's position features (`ContextAxis.positions`) and W (P, F) zero at
    first: a feature can learn to let go where the walk jumps, such as a raster row's wrap."""

    sparse_state = True

    def __init__(self, cfg: ContextualConfig):
        super().__init__(cfg)
        self.persistence = nn.Parameter(torch.full((cfg.width,), float(cfg.init_persistence)))
        self.reset_in_raw, self.reset_out_raw = reset_parameters(cfg)
        if cfg.position_gates:
            self.position_persistence = nn.Parameter(torch.zeros(MAX_POSITION_FEATURES, cfg.width))

    def _gates(self, axis: ContextAxis) -> Tensor:
        """The persistence gates: (F,), or (S, F), one row per step, with position gates."""
        if not self.cfg.position_gates:
            return persistence_gate(self.persistence)
        return persistence_gate(self.persistence + project_positions(axis.positions, self.position_persistence))

    def _parts(self, axis: ContextAxis) -> tuple[Tensor, Tensor, Tensor]:
        """A (F, r), B (r, F), both >= 0, and the persistence gates, (F,) or (S, F)."""
        return *reset_factors(self.reset_in_raw, self.reset_out_raw), self._gates(axis)

    def begin(self, batch: int, axis: ContextAxis) -> object:
        return self._parts(axis)

    def sparse_parts(self, axis: ContextAxis) -> tuple[Tensor, Tensor, Tensor]:
        """For `ctxsae_core.sparse_walk`: the gates, (F,) or (S, F), A (F, r), and B transposed to
        (F, r) and contiguous (its rows are gathered at every step)."""
        reset_in, reset_out, gate = self._parts(axis)
        return gate, reset_in, reset_out.T.contiguous()

    def carried(self, mem, t, s_parent, u_t):
        if s_parent is None:
            return None
        reset_in, reset_out, gate = mem
        gate = gate[t] if gate.dim() == 2 else gate
        gate = gate if u_t is None else reset_gates(gate, reset_in, reset_out, u_t)
        return self.hard(gate) * s_parent, s_parent != 0


@dataclass
class _AttentionMemory:
    positions: Tensor  # (S, P)
    mix: Tensor  # (H, F): how each feature mixes the heads
    last_step: Tensor  # (B, F) long: the step at which each feature last fired, -1 if never
    last_value: Tensor  # (B, F): the feature's state value at that step
    gate: Tensor  # (F,) hard persistence gates
    resets: tuple[Tensor, Tensor]  # the reset map's factors A (F, r), B (r, F)
    survival: Tensor  # (B, F): product of the step gates since the feature last fired (1 there)
    keys: Tensor | None = None  # (B, H, steps so far, dh); grown by cat (one autograd node a step)
    query_step: int = -1
    query_base: Tensor | None = None  # (B, H * dh) query from step query_step's position and parent
    prior_weight: Tensor | None = None  # (B, F) weights for query_base: the cap on what u_t may carry
    step_gate: Tensor | None = None  # (B, F) this step's gates, after its innovations' resets


@CARRIES.decorator("attention")
class AttentionCarry(Carry):
    """Causal attention over past codes: feature f, last fired at step j < t with state value
    v, is carried as

        hard(sum_h mix[h, f] a[h, t, j]) * prod_{s = j+1..t} hard(g[s, f]) * v,

    where a[h, t, j] = sigmoid(q_t . k_j / sqrt(dh) + b_h); queries read the parent's state,
    u_t and t's position; keys read u_j and j's position; and g[s] = gate * exp(-(u_s A B)) is
    the gated carry's step gate: the feature's persistence times the resets that the
    innovations firing at step s drive (s counts steps in the axis's walk order). Codes and
    positions only, so the decoder still reads codes only; the value is the feature's own
    earlier state, so a carried feature stays a row of the one dictionary and is never
    counted twice. The attention chooses which earlier steps a position reads; persistence
    and resets decide, feature by feature, what has survived since.

    Both are needed. The attention weight is shared by every feature last fired at the same
    step, so without the persistence decay every feature that fired anywhere earlier in the
    window is carried at once, and the state swells. Without the resets the attention forgets
    by step, not by feature, and a region's old value lingers after a new one fires. The
    attention starts open (b_h = 4), so the persistences and resets learn first, as the gated
    carry's do; the attention can then lower what chosen steps carry (CHANGELOG.md has the runs
    behind these choices).

    What step t's innovations carry is capped at the prior the encoder coded against (the
    weight without u_t): firing features may lower what is carried, as resets do, but never
    raise it, so the state cannot overshoot what the encoder saw. With `prior` holding the
    attention weights' inputs fixed, this keeps training stable."""

    def __init__(self, cfg: ContextualConfig, n_position_features: int = MAX_POSITION_FEATURES):
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
        self.reset_in_raw, self.reset_out_raw = reset_parameters(cfg)

    def begin(self, batch: int, axis: ContextAxis) -> object:
        f = self.cfg.width
        return _AttentionMemory(axis.positions, torch.softmax(self.mix_logits, dim=0),
                                torch.full((batch, f), -1, dtype=torch.long, device=self.W_k.device),
                                self.W_k.new_zeros(batch, f),
                                self.hard(persistence_gate(self.persistence)),
                                reset_factors(self.reset_in_raw, self.reset_out_raw), self.W_k.new_ones(batch, f))

    def carried(self, mem: _AttentionMemory, t, s_parent, u_t):
        if mem.keys is None:
            return None
        if mem.query_step != t:  # the part of the query both calls at step t share
            mem.query_step, mem.query_base = t, self._query(mem, t, s_parent)
            mem.prior_weight = self._weight(mem, mem.query_base)
        weight, mem.step_gate = mem.prior_weight, mem.gate
        if u_t is not None:
            weight = torch.minimum(weight, self._weight(mem, mem.query_base + u_t @ self.W_q_new))
            mem.step_gate = self.hard(reset_gates(mem.gate, *mem.resets, u_t))
        return self.hard(weight) * mem.survival * mem.step_gate * mem.last_value, mem.last_step >= 0

    def prior(self, mem, t, s_parent):
        """The query reads the parent's state without gradient and the keys are the memory's,
        detached: backpropagating the encoder's input into earlier steps through the attention
        weights makes the gradients explode. The carried values and their survival since they
        fired keep their gradient, as the gated carry's prior does (through its parent's state),
        which training needs to stay stable once the carry comes on."""
        if mem.keys is None:
            return None
        q = self._query(mem, t, None if s_parent is None else s_parent.detach())
        weight = self._weight(mem, q, mem.keys.detach())
        survival = mem.survival * mem.gate  # nothing fired at t yet: no resets
        return self.hard(weight) * survival * mem.last_value, mem.last_step >= 0

    def _query(self, mem: _AttentionMemory, t: int, s_parent: Tensor | None) -> Tensor:
        """(B, H * dh): the query from step t's position and the parent's state, before u_t."""
        q = project_positions(mem.positions[t], self.P_q)
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
        key = (u_t @ self.W_k + project_positions(mem.positions[t], self.P_k)).reshape(u_t.shape[0], self.cfg.heads, 1, -1)
        mem.keys = key if mem.keys is None else torch.cat([mem.keys, key], dim=2)
        fired = u_t != 0
        mem.last_step = torch.where(fired, t, mem.last_step)
        mem.last_value = torch.where(fired, s_t, mem.last_value)
        if mem.step_gate is not None:  # survival: 1 where a feature fires, times the step's gate elsewhere
            mem.survival = torch.where(fired, s_t.new_ones(()), mem.survival * mem.step_gate)
            mem.step_gate = None


def make_carry(cfg: ContextualConfig) -> Carry:
    """The carry module a contextual config names."""
    return CARRIES[cfg.carry](cfg)
