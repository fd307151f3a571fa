"""Coordinate MLPs: functions of a coordinate fitted to one scene. Two kinds: a ReLU MLP on a
NeRF positional encoding ("fourier") and SIREN ("siren"); and a radiance field built from
them (density + view-dependent colour, with a background that depends on direction only).

`forward` returns the output; `hidden` returns every hidden layer's activations, which are
what SAEs are later trained on."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

COORD_KINDS = ("fourier", "siren")


class PositionalEncoding(nn.Module):
    """gamma(x) = (x, sin(2^k pi x), cos(2^k pi x) for k < n_freqs): Mildenhall et al. 2020, eq. 4."""

    def __init__(self, in_dim: int, n_freqs: int):
        super().__init__()
        self.register_buffer("freqs", math.pi * 2.0 ** torch.arange(n_freqs, dtype=torch.float32))
        self.out_dim = in_dim * (1 + 2 * n_freqs)

    def forward(self, x: Tensor) -> Tensor:
        angles = (x[..., None] * self.freqs).flatten(-2)  # (..., in_dim * n_freqs)
        return torch.cat([x, angles.sin(), angles.cos()], dim=-1)


class Sine(nn.Module):
    """sin(omega0 * x): the SIREN nonlinearity (Sitzmann et al. 2020, sec. 3.2; omega0 = 30)."""

    def __init__(self, omega0: float):
        super().__init__()
        self.omega0 = omega0

    def forward(self, x: Tensor) -> Tensor:
        return torch.sin(self.omega0 * x)


class CoordMLP(nn.Module):
    """in_dim coordinates -> out_dim values through `layers` hidden layers of width `hidden`."""

    def __init__(self, in_dim: int, out_dim: int, kind: str = "fourier", hidden: int = 128, layers: int = 4,
                 n_freqs: int = 8, omega0: float = 30.0):
        super().__init__()
        if kind not in COORD_KINDS:
            raise ValueError(f"coordinate MLP kind {kind!r} is not one of {', '.join(COORD_KINDS)}")
        self.kind = kind
        self.encode = PositionalEncoding(in_dim, n_freqs) if kind == "fourier" else nn.Identity()
        width_in = self.encode.out_dim if kind == "fourier" else in_dim
        self.linears = nn.ModuleList(nn.Linear(width_in if i == 0 else hidden, hidden) for i in range(layers))
        self.act = nn.ReLU() if kind == "fourier" else Sine(omega0)
        self.head = nn.Linear(hidden, out_dim)
        if kind == "siren":
            self._siren_init(omega0)

    @torch.no_grad()
    def _siren_init(self, omega0: float) -> None:
        """First layer U(-1/n, 1/n), later layers U(-sqrt(6/n)/omega0, +): Sitzmann et al. 2020, sec. 3.2."""
        for i, layer in enumerate([*self.linears, self.head]):
            n = layer.in_features
            bound = 1 / n if i == 0 else math.sqrt(6 / n) / omega0
            layer.weight.uniform_(-bound, bound)

    def hidden(self, x: Tensor) -> list[Tensor]:
        """Activations (..., hidden) after each hidden layer's nonlinearity."""
        h, out = self.encode(x), []
        for layer in self.linears:
            h = self.act(layer(h))
            out.append(h)
        return out

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.hidden(x)[-1])


class RadianceField(nn.Module):
    """Density and view-dependent colour at 3D points, and a background colour per direction.

    A trunk CoordMLP maps a point to a raw density and a feature; a small head maps the feature
    and the encoded view direction to RGB (NeRF's split, so density cannot depend on view)."""

    def __init__(self, kind: str = "fourier", hidden: int = 128, layers: int = 4, pos_freqs: int = 6,
                 dir_freqs: int = 3, omega0: float = 30.0):
        super().__init__()
        self.trunk = CoordMLP(3, hidden + 1, kind, hidden, layers, pos_freqs, omega0)
        self.dir_encode = PositionalEncoding(3, dir_freqs)
        self.colour = nn.Sequential(nn.Linear(hidden + self.dir_encode.out_dim, hidden // 2), nn.ReLU(),
                                    nn.Linear(hidden // 2, 3))
        self.background = nn.Sequential(nn.Linear(self.dir_encode.out_dim, 64), nn.ReLU(), nn.Linear(64, 3))

    def hidden(self, points: Tensor) -> list[Tensor]:
        """Every hidden layer's activations at points (N, 3), density trunk first."""
        return self.trunk.hidden(points)

    def forward(self, points: Tensor, dirs: Tensor) -> tuple[Tensor, Tensor]:
        """points, unit dirs (..., 3) -> (density (...,) >= 0, rgb (..., 3) in [0, 1])."""
        out = self.trunk(points)
        sigma = nn.functional.softplus(out[..., 0] - 1.0)  # shifted: starts nearly empty, not foggy
        rgb = torch.sigmoid(self.colour(torch.cat([out[..., 1:], self.dir_encode(dirs)], dim=-1)))
        return sigma, rgb

    def background_colour(self, dirs: Tensor) -> Tensor:
        """The colour seen beyond the bounds along directions (N, 3)."""
        return torch.sigmoid(self.background(self.dir_encode(dirs)))
