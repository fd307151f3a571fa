"""Carries: how a contextual SAE's state reaches a step from the codes before it.

A carry sees codes and positions only, never activations, so the reconstruction stays a
function of the codes (DESIGN.md, invariant 1). Called with the step's innovations `u_t`, it
gives what the state carries into the step; called with `u_t=None`, it gives the prior the
encoder codes against (what would be carried if nothing new fired). The model then cuts
carried values below `carry_threshold` to exactly zero (`ContextualSAE`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ctxsae_core.axes import ContextAxis
from ctxsae_core.config import ContextualConfig
from ctxsae_core.registry import CARRIES

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
        return g + (g * (g >= self.cfg.gate_floor) - g).detach()

    def remember(self, mem: object, t: int, u_t: Tensor) -> None:
        """Record step t's innovations (B, F) for later steps."""


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
        return (F.softplus(self.reset_in_raw), F.softplus(self.reset_out_raw))

    def persistence_gate(self) -> Tensor:
        """(F,) gate of each feature when nothing resets it: sigmoid(persistence) * 1.1, capped at
        1 (gradient straight through the cap), so a feature can persist exactly, without decay."""
        g = torch.sigmoid(self.persistence) * _PERSISTENCE_HEADROOM
        return g + (g.clamp(max=1.0) - g).detach()

    def carried(self, mem, t, s_parent, u_t):
        if s_parent is None:
            return None
        gate = self.persistence_gate()
        if u_t is not None:
            reset_in, reset_out = mem
            gate = gate * torch.exp(-(u_t @ reset_in) @ reset_out)  # (B, F)
        return self.hard(gate) * s_parent, s_parent != 0

    def gates(self, u_t: Tensor) -> Tensor:
        """(B, F) gates after innovations u_t fire, for analysis."""
        reset_in, reset_out = F.softplus(self.reset_in_raw), F.softplus(self.reset_out_raw)
        return self.persistence_gate() * torch.exp(-(u_t @ reset_in) @ reset_out)


@dataclass
class _AttentionMemory:
    positions: Tensor  # (S, P)
    mix: Tensor  # (F, H) how each feature mixes the heads
    seen: Tensor | None = None  # (B, F) bool: features that have fired earlier in the window
    keys: list[Tensor] = field(default_factory=list)  # per step (B, H, dh)
    rows: list[Tensor] = field(default_factory=list)  # past innovations in COO form
    steps: list[Tensor] = field(default_factory=list)
    cols: list[Tensor] = field(default_factory=list)
    vals: list[Tensor] = field(default_factory=list)


@CARRIES.decorator("attention")
class AttentionCarry(Carry):
    """Causal sigmoid attention over past innovations: a_{h,t,j} = sigmoid(q_t . k_j / sqrt(dh) + b_h)
    with q_t from the parent's state, u_t and t's position, k_j from u_j and j's position; a
    feature f is carried as sum_h mix_{f,h} sum_{j<t} a_{h,t,j} u_{j,f}, so carried codes stay
    in the one dictionary (DESIGN.md, invariant 3)."""

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
        self.mix_logits = nn.Parameter(torch.zeros(f, cfg.heads))

    def _pos(self, positions: Tensor, P: Tensor) -> Tensor:
        return positions.to(P.dtype) @ P[: positions.shape[-1]]  # axes have 8 to 24 position features

    def begin(self, batch: int, axis: ContextAxis) -> object:
        return _AttentionMemory(axis.positions, torch.softmax(self.mix_logits, dim=1))

    def carried(self, mem: _AttentionMemory, t, s_parent, u_t):
        if not mem.keys:
            return None
        heads, dh = self.cfg.heads, self.cfg.head_dim
        q = self._pos(mem.positions[t], self.P_q)
        if s_parent is not None:
            q = q + s_parent @ self.W_q_state
        if u_t is not None:
            q = q + u_t @ self.W_q_new
        batch, t_past = mem.keys[0].shape[0], len(mem.keys)
        q = q.expand(batch, -1).reshape(batch, heads, dh)
        keys = torch.stack(mem.keys, dim=2)  # (B, H, t, dh)
        attn = torch.sigmoid(torch.einsum("bhd,bhjd->bjh", q, keys) / math.sqrt(dh) + self.bias)  # (B, t, H)
        rows, steps, cols = torch.cat(mem.rows), torch.cat(mem.steps), torch.cat(mem.cols)
        # past innovation e = (row, step, col, val) is carried with weight sum_h attn[row, step, h] mix[col, h];
        # index_select / index_add keep the backward pass cheap (no accumulating index_put)
        a_e = attn.reshape(batch * t_past, heads).index_select(0, rows * t_past + steps)  # (nnz, H)
        weight = self.hard((a_e * mem.mix.index_select(0, cols)).sum(1))
        c = torch.cat(mem.vals) * weight
        out = c.new_zeros(batch * self.cfg.width).index_add(0, rows * self.cfg.width + cols, c)
        return out.view(batch, self.cfg.width), mem.seen

    def remember(self, mem: _AttentionMemory, t, u_t):
        key = u_t @ self.W_k + self._pos(mem.positions[t], self.P_k)
        mem.keys.append(key.reshape(u_t.shape[0], self.cfg.heads, self.cfg.head_dim))
        fired = u_t != 0
        mem.seen = fired if mem.seen is None else mem.seen | fired
        rows, cols = fired.nonzero(as_tuple=True)
        mem.rows.append(rows)
        mem.cols.append(cols)
        mem.steps.append(torch.full_like(rows, t))
        mem.vals.append(u_t[rows, cols])


def make_carry(cfg: ContextualConfig) -> Carry:
    return CARRIES[cfg.carry](cfg)
