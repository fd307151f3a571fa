"""Continuous ground truth that needs no rendering: colour along any ray, colour at any
continuous image coordinate, and density / signed distance / object / albedo at any 3D
point. Coordinate MLPs are checked against these."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from scenes.geometry import SceneGeometry
from scenes.raycast import camera_rays, light_directions, shade, shadow_rays, trace
from scenes.spec import Scene

# Objects are opaque solids: their true density is infinite inside. As a finite stand-in, a
# density that makes 0.05 world units of solid 99.3% opaque (1 - exp(-100 * 0.05)).
SOLID_DENSITY = 100.0


def _geometry(scene: Scene | SceneGeometry) -> SceneGeometry:
    return scene if isinstance(scene, SceneGeometry) else SceneGeometry(scene)


@torch.no_grad()
def ray_colour(scene: Scene | SceneGeometry, origins: Tensor, dirs: Tensor) -> Tensor:
    """Linear RGB (N, 3) seen along rays (origins, unit dirs), each (N, 3)."""
    return trace(_geometry(scene), origins, dirs).rgb


@torch.no_grad()
def image_colour(scene: Scene | SceneGeometry, xy: Tensor, size: int | tuple[int, int]) -> Tensor:
    """Colour (N, 3) at continuous image coordinates xy (N, 2) = (x right, y down) in pixels of
    an image of `size`: the colour along the camera ray through that point (no filtering)."""
    geo = _geometry(scene)
    height, width = (size, size) if isinstance(size, int) else size
    return trace(geo, *camera_rays(geo.scene.camera, xy, height, width)).rgb


@dataclass
class PointTruth:
    """The scene at 3D points (N): object id is that of the nearest surface (inside or out)."""

    sdf: Tensor  # (N,) signed distance to the union of all objects (negative inside)
    inside: Tensor  # (N,) bool
    density: Tensor  # (N,) SOLID_DENSITY inside, 0 outside
    object_id: Tensor  # (N,) long
    kind_id: Tensor  # (N,) long, index into spec.KINDS
    material_id: Tensor  # (N,) long
    texture_id: Tensor  # (N,) long
    albedo: Tensor  # (N, 3): the nearest object's textured albedo at the point


@torch.no_grad()
def point_truth(scene: Scene | SceneGeometry, points: Tensor) -> PointTruth:
    """Density, signed distance, object, kind, material, texture and albedo at points (N, 3)."""
    geo = _geometry(scene)
    sdf, oid = geo.sdf(points)
    inside = sdf < 0
    return PointTruth(sdf, inside, inside.to(points.dtype) * SOLID_DENSITY, albedo=geo.albedo(points, oid),
                      **geo.labels(oid))


@torch.no_grad()
def surface_radiance(scene: Scene | SceneGeometry, points: Tensor, view_dirs: Tensor) -> Tensor:
    """Radiance (N, 3) that a viewer looking along unit view_dirs (N, 3) sees leaving surface
    points (N, 3) of the nearest object: the view-dependent colour a radiance field should
    give there. Points off any surface take the nearest object's normal and albedo."""
    geo = _geometry(scene)
    _, oid = geo.sdf(points)
    normal = geo.normals(points, oid)
    lit = shadow_rays(geo, points, normal)
    return shade(geo, points, normal, view_dirs, oid, lit, geo.albedo(points, oid)).clamp(0, 1)


NORMAL_BINS = ("+x", "-x", "+y", "-y", "+z", "-z")


def normal_bin(normals: Tensor) -> Tensor:
    """Index into NORMAL_BINS (N,) of the dominant axis and sign of unit normals (N, 3)."""
    axis = normals.abs().argmax(-1)
    negative = normals.gather(1, axis[:, None])[:, 0] < 0
    return axis * 2 + negative.long()


@torch.no_grad()
def point_factors(scene: Scene | SceneGeometry, points: Tensor) -> dict[str, Tensor]:
    """Ground-truth factors (N,) at 3D points, as labels: the nearest object's id, kind,
    material and texture; inside or not; the bin of the nearest surface's normal; and whether
    that surface point (the point moved along the normal by its signed distance) faces the
    first light but is shadowed from it by an object; and the signed distance ("sdf", float)."""
    geo = _geometry(scene)
    truth = point_truth(geo, points)
    normal = geo.normals(points, truth.object_id)
    surface = points - truth.sdf[:, None] * normal
    to_light, _, _ = light_directions(geo.scene.lights[0], surface)
    facing = (normal * to_light).sum(-1) > 0
    shadowed = facing & ~shadow_rays(geo, surface, normal)[:, 0]  # faces the light, but something blocks it
    return {**geo.labels(truth.object_id), "inside": truth.inside.long(), "normal_bin": normal_bin(normal),
            "shadowed": shadowed.long(), "sdf": truth.sdf}
