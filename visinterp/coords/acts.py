"""Activation windows from a fitted coordinate MLP's hidden layer, with the scene's ground-truth
factors at every position.

Radiance fields: one window per camera ray, its positions the samples from near to far (a
natural sequence axis: `tokens`). Image fits: one window per square tile of the pixel grid,
in raster order inside the tile (a spatial axis: `raster` or `quadtree`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor

from ctxsae_common.errors import InputError
from scenes.coord_fit import FitConfig, orbit_cameras, scene_bounds
from scenes.coord_mlp import CoordMLP, RadianceField
from scenes.query import normal_bin, point_factors
from scenes.raycast import camera_rays, pixel_grid
from scenes.render import render
from scenes.spec import Scene
from scenes.volume import ray_sphere, sample_t

DEPTH_BINS = 4  # quantile bins of depth along the rays / in the image
# Ray samples farther than this from every surface (world units) are empty space: their
# surface factors are -1 rather than those of the nearest object, which they do not show.
SURFACE_BAND = 0.1
SURFACE_FACTORS = ("object_id", "kind_id", "material_id", "texture_id", "normal_bin", "shadowed")


@dataclass
class Windows:
    """acts (N, T, d); factors name -> (N, T) labels; where (N, T, 3): (view, row, col) of each
    position's pixel, for pictures; axis and grid as ctxsae_core.make_axis takes them."""

    acts: Tensor
    factors: dict[str, Tensor]
    where: Tensor
    axis: str
    grid: tuple[int, int] | None
    continuous: tuple[str, ...] = ("depth",)


def _depth_bins(depth: Tensor) -> Tensor:
    finite = torch.isfinite(depth)
    edges = torch.quantile(depth[finite], torch.linspace(0, 1, DEPTH_BINS + 1)[1:-1])
    return torch.where(finite, torch.bucketize(depth, edges), torch.full_like(depth, DEPTH_BINS, dtype=torch.long))


@torch.no_grad()
def ray_windows(field: RadianceField, scene: Scene, cfg: FitConfig, views: int = 4, size: int = 32,
                layer: int = -1) -> Windows:
    """Windows of the field's hidden layer along the rays of `views` cameras (between the
    training views) that cross the fitted volume, cfg.samples positions each."""
    bounds = scene_bounds(scene)
    acts, factors, where = [], [], []
    for v, cam in enumerate(orbit_cameras(scene.camera, views, 0.25)):
        xy = pixel_grid(size, size, [(0.5, 0.5)])[0]
        o, d = camera_rays(cam, xy, size, size)
        near, far = ray_sphere(o, d, bounds)
        keep = far > near
        o, d, xy, near, far = o[keep], d[keep], xy[keep], near[keep], far[keep]
        t = sample_t(near, far, cfg.samples)  # (R, n) bin centres, near to far
        points = o[:, None] + t[..., None] * d[:, None]
        acts.append(field.hidden(points)[layer])
        f = point_factors(scene, points.reshape(-1, 3))
        f = {k: x.reshape(t.shape) for k, x in f.items()}
        far = f.pop("sdf").abs() > SURFACE_BAND  # empty space: no object, surface or shadow to name
        for k in SURFACE_FACTORS:
            f[k] = torch.where(far, torch.full_like(f[k], -1), f[k])
        f["depth"] = t
        factors.append(f)
        pix = torch.stack([torch.full_like(xy[:, 0], v), xy[:, 1] - 0.5, xy[:, 0] - 0.5], -1).long()
        where.append(pix[:, None].expand(-1, cfg.samples, -1))
    merged = {k: torch.cat([f[k] for f in factors]) for k in factors[0]}
    merged["depth_bin"] = _depth_bins(merged["depth"])
    return Windows(torch.cat(acts), merged, torch.cat(where), "tokens", None)


@torch.no_grad()
def pixel_windows(model: CoordMLP, scene: Scene, size: int, tile: int = 8, layer: int = -1) -> Windows:
    """Windows of the image MLP's hidden layer over tile x tile squares of a size x size grid."""
    if size % tile:
        raise InputError(f"image size {size} is not a multiple of the tile {tile}: pick a --tile that divides --size")
    xy = pixel_grid(size, size, [(0.5, 0.5)])[0]
    acts = model.hidden(2 * xy / size - 1)[layer]  # (H*W, d)
    truth = render(scene, size, aa=1)
    facing_unlit = (truth.object_id >= 0) & ~truth.lit[..., 0]
    labels = {"object_id": truth.object_id, "kind_id": truth.kind_id, "material_id": truth.material_id,
              "texture_id": truth.texture_id, "normal_bin": _normal_bins(truth.normal, truth.object_id),
              "unlit": facing_unlit.long(), "depth": truth.depth}
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    where = torch.stack([torch.zeros_like(rows), rows, cols], -1)

    def tiles(x: Tensor) -> Tensor:
        x = x.reshape(size, size, -1)
        return rearrange(x, "(a h) (b w) c -> (a b) (h w) c", h=tile, w=tile)

    factors = {k: tiles(v).squeeze(-1) for k, v in labels.items()}
    factors["depth_bin"] = _depth_bins(factors["depth"])
    factors["depth"] = torch.nan_to_num(factors["depth"], posinf=float(factors["depth"][torch.isfinite(factors["depth"])].max()))
    return Windows(tiles(acts), factors, tiles(where), "raster", (tile, tile))


def _normal_bins(normal: Tensor, object_id: Tensor) -> Tensor:
    bins = normal_bin(normal.reshape(-1, 3)).reshape(object_id.shape)
    return torch.where(object_id >= 0, bins, torch.full_like(bins, -1))
