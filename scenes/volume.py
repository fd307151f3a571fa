"""Volume rendering of a radiance field along rays (Mildenhall et al. 2020, eq. 3), inside a
bounding sphere; what lies beyond it is the field's background colour for the direction."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from scenes.coord_mlp import RadianceField


@dataclass(frozen=True)
class Bounds:
    """The sphere that holds the fitted volume."""

    centre: tuple[float, float, float] = (0.0, 0.4, 0.0)
    radius: float = 2.8


def ray_sphere(origins: Tensor, dirs: Tensor, bounds: Bounds) -> tuple[Tensor, Tensor]:
    """(near, far) (R,) where unit rays cross the bounds; near == far for rays that miss."""
    oc = origins - origins.new_tensor(bounds.centre)
    b = (oc * dirs).sum(-1)
    disc = b * b - (oc * oc).sum(-1) + bounds.radius**2
    root = disc.clamp(min=0).sqrt()
    near = (-b - root).clamp(min=0)
    far = torch.maximum(-b + root, near)
    return near, torch.where(disc > 0, far, near)


def sample_t(near: Tensor, far: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
    """(R, n) distances: one per equal bin of [near, far], jittered within it when a generator is
    given (stratified sampling, training) and at bin centres otherwise (evaluation)."""
    if generator is not None:  # drawn where the generator lives, used where the rays are
        u = torch.rand(near.shape[0], n, generator=generator, device=generator.device).to(near.device)
    else:
        u = torch.full((near.shape[0], n), 0.5, device=near.device)
    bins = (torch.arange(n, dtype=near.dtype) + u) / n
    return near[:, None] + (far - near)[:, None] * bins


@dataclass
class VolumeRender:
    """What volume rendering gives per ray: colour, expected depth, opacity and the samples' weights."""

    rgb: Tensor  # (R, 3) composited over the background
    depth: Tensor  # (R,) expected termination distance (far where nothing is hit)
    opacity: Tensor  # (R,) 1 - transmittance through the bounds
    weights: Tensor  # (R, n)
    t: Tensor  # (R, n)


def composite(sigma: Tensor, rgb: Tensor, t: Tensor, far: Tensor, background: Tensor) -> VolumeRender:
    """C = sum_i T_i alpha_i c_i + T_n bg, alpha_i = 1 - exp(-sigma_i delta_i), T_i = prod_{j<i} (1 - alpha_j)."""
    delta = torch.cat([t[:, 1:] - t[:, :-1], (far[:, None] - t[:, -1:]).clamp(min=0)], dim=1)  # (R, n)
    alpha = 1 - torch.exp(-sigma * delta)
    trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1 - alpha + 1e-10], dim=1), dim=1)
    weights = trans[:, :-1] * alpha
    opacity = weights.sum(1)
    colour = (weights[..., None] * rgb).sum(1) + (1 - opacity)[:, None] * background
    depth = (weights * t).sum(1) + (1 - opacity) * far
    return VolumeRender(colour, depth, opacity, weights, t)


def render_rays(field: RadianceField, origins: Tensor, dirs: Tensor, bounds: Bounds, n_samples: int,
                generator: torch.Generator | None = None) -> VolumeRender:
    """Render rays through a radiance field in chunks (Mildenhall et al. 2020, eq. 3)."""
    near, far = ray_sphere(origins, dirs, bounds)
    t = sample_t(near, far, n_samples, generator)
    points = origins[:, None] + t[..., None] * dirs[:, None]  # (R, n, 3)
    sigma, rgb = field(points, dirs[:, None].expand_as(points))
    return composite(sigma, rgb, t, far, field.background_colour(dirs))
