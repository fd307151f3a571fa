"""Rays: the camera's rays, sphere tracing, shadows, shading and the background.

`trace` answers, for any batch of rays, what a camera sees along them and the ground truth of
the surface hit; rendering an image and the continuous queries both go through it, so they
agree exactly."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from scenes.geometry import SceneGeometry
from scenes.spec import MATERIALS, Background, Camera, Light

HIT_EPS = 1e-3  # a ray has hit when the SDF is below HIT_EPS * max(1, t)
MAX_STEPS = 192
FAR = 60.0  # world units; every sampled scene fits well inside
SPECULAR = 0.5  # Blinn-Phong weight and exponent of glossy materials
SHININESS = 48.0


def camera_frame(camera: Camera) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(eye, forward, right, up) as (3,) tensors; y is world up."""
    eye = torch.tensor(camera.eye, dtype=torch.float32)
    forward = F.normalize(torch.tensor(camera.target, dtype=torch.float32) - eye, dim=0)
    right = F.normalize(torch.linalg.cross(forward, torch.tensor([0.0, 1.0, 0.0])), dim=0)
    return eye, forward, right, torch.linalg.cross(right, forward)


def camera_rays(camera: Camera, xy: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """Rays (origins, unit directions), each (N, 3), through continuous image coordinates
    xy (N, 2) = (x right, y down) in pixels: pixel (row i, col j) spans [j, j+1) x [i, i+1)."""
    eye, forward, right, up = camera_frame(camera)
    half = math.tan(math.radians(camera.fov) / 2)
    sx = (2 * xy[:, 0] / width - 1) * half * width / height
    sy = (1 - 2 * xy[:, 1] / height) * half
    dirs = F.normalize(forward + sx[:, None] * right + sy[:, None] * up, dim=-1)
    return eye.expand_as(dirs), dirs


def pixel_grid(height: int, width: int, offsets: list[tuple[float, float]]) -> Tensor:
    """Image coordinates (len(offsets), H*W, 2) of each pixel at sub-pixel offsets in [0, 1)."""
    i, j = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32),
                          indexing="ij")
    base = torch.stack([j.reshape(-1), i.reshape(-1)], dim=-1)
    return torch.stack([base + torch.tensor(o) for o in offsets])


def march(geo: SceneGeometry, origins: Tensor, dirs: Tensor, t_max: Tensor | float = FAR) -> tuple[Tensor, Tensor, Tensor]:
    """Sphere-trace rays (N, 3) up to t_max. Returns (t, hit, object id); t is the distance
    along the ray, and only rays still travelling are evaluated at each step."""
    n = origins.shape[0]
    t_max = torch.as_tensor(t_max, dtype=origins.dtype).expand(n)
    t = origins.new_zeros(n)
    hit = torch.zeros(n, dtype=torch.bool)
    oid = torch.full((n,), -1, dtype=torch.long)
    active = torch.arange(n)
    for _ in range(MAX_STEPS):
        if active.numel() == 0:
            break
        dist, near = geo.sdf(origins[active] + t[active, None] * dirs[active])
        done = dist < HIT_EPS * t[active].clamp(min=1)
        hit[active[done]] = True
        oid[active[done]] = near[done]
        t[active] += torch.where(done, torch.zeros_like(dist), dist)
        active = active[~done & (t[active] < t_max[active])]
    return t, hit, oid


def background(bg: Background, dirs: Tensor, lights: tuple[Light, ...]) -> Tensor:
    """Colour (N, 3) seen along directions that hit nothing."""
    c1, c2 = dirs.new_tensor(bg.colour), dirs.new_tensor(bg.colour2)
    if bg.kind == "flat":
        return c1.expand(dirs.shape[0], 3).clone()
    up = dirs[:, 1:2]
    if bg.kind == "gradient":
        return c1 + (c2 - c1) * (0.5 * (up + 1))
    sky = c1 + (c2 - c1) * up.clamp(min=0).sqrt()  # horizon to zenith
    sun = next((l for l in lights if l.kind == "directional"), None)
    if sun is not None:
        to_sun = -F.normalize(dirs.new_tensor(sun.direction), dim=0)
        glow = (dirs @ to_sun).clamp(min=0).pow(64)[:, None]
        sky = sky + glow * dirs.new_tensor(sun.colour) * sun.intensity
    return sky


def light_directions(light: Light, p: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(unit direction to the light (N, 3), distance (N,), irradiance scale (N,)) at points p."""
    if light.kind == "directional":
        d = -F.normalize(p.new_tensor(light.direction), dim=0)
        return d.expand_as(p), torch.full((p.shape[0],), FAR, dtype=p.dtype), p.new_full((p.shape[0],), light.intensity)
    to = p.new_tensor(light.position) - p
    dist = to.norm(dim=-1).clamp(min=1e-6)
    return to / dist[:, None], dist, light.intensity / dist.pow(2)


def shadow_rays(geo: SceneGeometry, p: Tensor, n: Tensor) -> Tensor:
    """Whether each light reaches points p with normals n: (N, n_lights) bool (hard shadows)."""
    lit = []
    for light in geo.scene.lights:
        to, dist, _ = light_directions(light, p)
        start = p + n * (4 * HIT_EPS)
        _, blocked, _ = march(geo, start, to, dist - 4 * HIT_EPS)
        lit.append(~blocked & ((n * to).sum(-1) > 0))
    return torch.stack(lit, dim=-1)


def shade(geo: SceneGeometry, p: Tensor, n: Tensor, view: Tensor, oid: Tensor, lit: Tensor, albedo: Tensor) -> Tensor:
    """Radiance (N, 3) leaving surface points p toward -view: ambient + Lambert + Blinn-Phong
    specular (glossy materials) from every light that reaches the point, or the emission of an
    emissive object."""
    scene = geo.scene
    rgb = albedo * scene.ambient
    glossy = (geo.material_ids[oid] == MATERIALS.index("glossy")).to(p.dtype)
    for li, light in enumerate(scene.lights):
        to, _, scale = light_directions(light, p)
        colour = p.new_tensor(light.colour) * (scale * lit[:, li].to(p.dtype))[:, None]
        ndotl = (n * to).sum(-1).clamp(min=0)[:, None]
        half = F.normalize(to - view, dim=-1)
        spec = SPECULAR * glossy[:, None] * (n * half).sum(-1).clamp(min=0).pow(SHININESS)[:, None]
        rgb = rgb + colour * (albedo * ndotl + spec * (ndotl > 0))
    emission = geo.emission(oid)[:, None]
    return torch.where(emission > 0, albedo * emission, rgb)


@dataclass
class RayTruth:
    """What rays (N) see, and the ground truth of the surface each hits (background: t = inf,
    object_id = -1, normal and albedo zero, lit False)."""

    rgb: Tensor  # (N, 3) linear RGB, clipped to [0, 1]
    t: Tensor  # (N,) distance along the ray
    hit: Tensor  # (N,) bool
    object_id: Tensor  # (N,) long
    normal: Tensor  # (N, 3)
    albedo: Tensor  # (N, 3)
    lit: Tensor  # (N, n_lights) bool


def trace(geo: SceneGeometry, origins: Tensor, dirs: Tensor) -> RayTruth:
    """Colour and ground truth along rays (N, 3)."""
    n_rays = origins.shape[0]
    t, hit, oid = march(geo, origins, dirs)
    rgb = background(geo.scene.background, dirs, geo.scene.lights)
    normal = origins.new_zeros(n_rays, 3)
    albedo = origins.new_zeros(n_rays, 3)
    lit = torch.zeros(n_rays, len(geo.scene.lights), dtype=torch.bool)
    idx = hit.nonzero()[:, 0]
    if idx.numel():
        p = origins[idx] + t[idx, None] * dirs[idx]
        o = oid[idx]
        normal[idx] = geo.normals(p, o)
        albedo[idx] = geo.albedo(p, o)
        lit[idx] = shadow_rays(geo, p, normal[idx])
        rgb[idx] = shade(geo, p, normal[idx], dirs[idx], o, lit[idx], albedo[idx])
    t = torch.where(hit, t, torch.full_like(t, math.inf))
    return RayTruth(rgb.clamp(0, 1), t, hit, oid, normal, albedo, lit)
