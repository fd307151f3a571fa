"""Context axes as data: the order in which a window's positions are visited and each step's parent.

A contextual SAE walks a window step by step; each step carries state from its parent step.
`tokens` and `raster` visit the T input positions in order, each carrying from the one before.
`quadtree` first visits pooled cells of an H x W grid, coarse to fine, each carrying from the
coarser cell that contains it, so a feature that holds over a whole region can be paid for once
at the coarsest cell where it holds. The model receives a `ContextAxis`; it has no axis code."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange, reduce
from torch import Tensor

from ctxsae_common.errors import InputError

AXIS_KINDS = ("tokens", "raster", "quadtree")
_FOURIER_OCTAVES = 4  # position features sin/cos(2^j pi c), j < 4: resolves 1/16 of the axis
MAX_POSITION_FEATURES = 3 * 2 * _FOURIER_OCTAVES  # the quadtree's three coordinates; tokens 8, raster 16


@dataclass(frozen=True)
class ContextAxis:
    """How a window of `n_inputs` positions is walked. Steps are numbered in causal order."""

    kind: str
    n_inputs: int  # T: positions in each data window
    grid: tuple[int, int] | None  # (H, W) for image axes
    parent: Tensor  # (S,) long: parent step of each step, -1 for a root; always < the step
    input_step: Tensor  # (T,) long: the step at which each input position is visited
    positions: Tensor  # (S, P) float: Fourier features of each step's coordinates (attention carry)
    levels: tuple[tuple[int, int], ...] = ()  # quadtree: (H_l, W_l) per level, coarsest first

    @property
    def n_steps(self) -> int:
        """S: the steps a walk takes (T, plus the pooled cells of a quadtree axis)."""
        return int(self.parent.numel())

    def expand(self, x: Tensor) -> Tensor:
        """Input windows (B, T, D) -> per-step values (B, S, D); pooled cells are means of the
        input positions they cover."""
        if x.shape[1] != self.n_inputs:
            raise InputError(f"windows have T={x.shape[1]} positions but the {self.kind} axis expects "
                             f"{self.n_inputs}: pass a matching --grid or --tokens")
        if self.kind != "quadtree":
            return x
        h, w = self.grid
        sums = rearrange(x, "b (h w) d -> b d h w", h=h, w=w)
        counts = x.new_ones(1, 1, h, w)
        pooled = []
        for _ in self.levels[:-1]:  # finest pooled level first
            sums, counts = _sum_2x2(sums), _sum_2x2(counts)
            pooled.append(rearrange(sums / counts, "b d h w -> b (h w) d"))
        return torch.cat([*reversed(pooled), x], dim=1)

    def to_dict(self) -> dict:
        """A JSON-ready dict (kind, T, grid); `from_dict` rebuilds the axis from it."""
        return {"kind": self.kind, "n_inputs": self.n_inputs, "grid": list(self.grid) if self.grid else None}

    @staticmethod
    def from_dict(values: dict, where: str = "axis") -> "ContextAxis":
        """Inverse of `to_dict`; a malformed dict is a one-line InputError naming `where`."""
        grid = values.get("grid")
        if not isinstance(values.get("kind"), str) or not isinstance(values.get("n_inputs"), int) or not (
                grid is None or (isinstance(grid, list) and len(grid) == 2 and all(isinstance(g, int) for g in grid))):
            raise InputError(f"{where}: expected {{'kind': str, 'n_inputs': int, 'grid': [H, W] or null}}, got "
                             f"{values!r}: save the SAE again")
        return make_axis(values["kind"], values["n_inputs"], tuple(grid) if grid else None)


def _sum_2x2(t: Tensor) -> Tensor:
    """Sum 2x2 blocks of (B, D, H, W), padding odd sides with zeros: (B, D, ceil(H/2), ceil(W/2))."""
    t = F.pad(t, (0, t.shape[-1] % 2, 0, t.shape[-2] % 2))
    return reduce(t, "b d (h p) (w q) -> b d h w", "sum", p=2, q=2)


def parse_grid(text: str) -> tuple[int, int]:
    """'16x16' -> (16, 16)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise InputError(f"--grid {text!r} is not of the form HxW, e.g. 16x16") from None
    if h < 1 or w < 1:
        raise InputError(f"--grid {text!r} needs positive sides")
    return h, w


def _fourier(coords: Tensor) -> Tensor:
    """(S, C) coordinates in [0, 1] -> (S, 2 * C * octaves) sin/cos features."""
    freqs = math.pi * 2.0 ** torch.arange(_FOURIER_OCTAVES)
    angles = coords[:, :, None] * freqs  # (S, C, O)
    return torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(1)


def make_axis(kind: str, n_inputs: int, grid: tuple[int, int] | None = None) -> ContextAxis:
    """Build an axis for windows of `n_inputs` positions. Image axes need `grid` = (H, W) with
    H * W == n_inputs; a square grid is inferred when it is not given."""
    if kind not in AXIS_KINDS:
        raise InputError(f"unknown axis {kind!r}: choose one of {', '.join(AXIS_KINDS)}")
    if n_inputs < 1:
        raise InputError(f"windows need at least one position, got T={n_inputs}")
    if kind == "tokens":
        coords = (torch.arange(n_inputs, dtype=torch.float32) / max(n_inputs - 1, 1))[:, None]
        return ContextAxis(kind, n_inputs, None, torch.arange(n_inputs) - 1, torch.arange(n_inputs), _fourier(coords))
    if grid is None:
        side = math.isqrt(n_inputs)
        if side * side != n_inputs:
            raise InputError(f"T={n_inputs} is not a square: pass --grid HxW with H*W = {n_inputs}")
        grid = (side, side)
    h, w = grid
    if h * w != n_inputs:
        raise InputError(f"--grid {h}x{w} has {h * w} cells but windows have T={n_inputs} positions: "
                         f"pass a grid with H*W = {n_inputs}")
    if kind == "raster":
        rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        coords = torch.stack([rows.flatten() / max(h - 1, 1), cols.flatten() / max(w - 1, 1)], dim=1).float()
        return ContextAxis(kind, n_inputs, grid, torch.arange(n_inputs) - 1, torch.arange(n_inputs), _fourier(coords))
    return _quadtree(n_inputs, grid)


def _quadtree(n_inputs: int, grid: tuple[int, int]) -> ContextAxis:
    h, w = grid
    levels = [(h, w)]
    while levels[-1] != (1, 1):
        hl, wl = levels[-1]
        levels.append((math.ceil(hl / 2), math.ceil(wl / 2)))
    levels.reverse()  # coarsest first
    offsets = [0]
    for hl, wl in levels:
        offsets.append(offsets[-1] + hl * wl)
    parent, coords = [], []
    n_levels = len(levels)
    for level, (hl, wl) in enumerate(levels):
        span = 2 ** (n_levels - 1 - level)  # leaves per cell side
        for r in range(hl):
            for c in range(wl):
                if level == 0:
                    parent.append(-1)
                else:
                    parent.append(offsets[level - 1] + (r // 2) * levels[level - 1][1] + c // 2)
                centre_r = min((r + 0.5) * span, h) / h
                centre_c = min((c + 0.5) * span, w) / w
                coords.append((level / max(n_levels - 1, 1), centre_r, centre_c))
    return ContextAxis(
        "quadtree", n_inputs, grid, torch.tensor(parent), torch.arange(n_inputs) + offsets[-2],
        _fourier(torch.tensor(coords, dtype=torch.float32)), tuple(levels),
    )
