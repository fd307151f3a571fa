"""Rendering an image of a scene: RGB with supersampled anti-aliasing, and per-pixel ground
truth from the ray through each pixel's centre (labels such as object id cannot be averaged)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ctxsae_common.device import creating_on
from scenes.geometry import SceneGeometry
from scenes.raycast import RayTruth, camera_frame, camera_rays, pixel_grid, trace
from scenes.spec import KINDS, MATERIALS, TEXTURES, Scene

CHUNK = 32768  # rays traced at once: bounds memory at any resolution


def srgb(linear: np.ndarray) -> np.ndarray:
    """Linear RGB (what the renderer computes, the models see and the ground truth stores) ->
    sRGB-encoded values for display (IEC 61966-2-1). Shown without it, an image looks far too
    dark: a linear 0.2 is displayed as 0.48 by this curve."""
    x = np.clip(linear, 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1 / 2.4) - 0.055)


@dataclass
class RenderOutput:
    """An image and its ground truth, all (H, W, ...) tensors. Background pixels: depth inf,
    ids -1, normal and albedo zero, lit False."""

    rgb: Tensor  # (H, W, 3) float in [0, 1], linear
    depth: Tensor  # (H, W) z-depth along the camera's forward axis
    normal: Tensor  # (H, W, 3) unit world-space normals
    object_id: Tensor  # (H, W) long: index into scene.objects
    kind_id: Tensor  # (H, W) long: index into spec.KINDS
    material_id: Tensor  # (H, W) long: index into spec.MATERIALS
    texture_id: Tensor  # (H, W) long: index into spec.TEXTURES (0 = none)
    albedo: Tensor  # (H, W, 3) textured albedo
    lit: Tensor  # (H, W, n_lights) bool: the light reaches the surface (not shadowed, facing it)

    def arrays(self) -> dict[str, np.ndarray]:
        """NumPy arrays in compact dtypes, as stored in the ground-truth .npz files."""
        out = {k: getattr(self, k).numpy() for k in ("rgb", "depth", "normal", "albedo")}
        out = {k: v.astype(np.float32) for k, v in out.items()}
        for k in ("object_id", "kind_id", "material_id", "texture_id"):
            out[k] = getattr(self, k).numpy().astype(np.int8)
        out["lit"] = self.lit.numpy()
        return out


def _trace_chunks(geo: SceneGeometry, origins: Tensor, dirs: Tensor) -> RayTruth:
    parts = [trace(geo, origins[i : i + CHUNK], dirs[i : i + CHUNK]) for i in range(0, origins.shape[0], CHUNK)]
    return RayTruth(*(torch.cat([getattr(p, f) for p in parts]) for f in RayTruth.__dataclass_fields__))


def subpixel_offsets(aa: int) -> list[tuple[float, float]]:
    """A regular aa x aa grid of sub-pixel offsets (stratified, deterministic)."""
    return [((a + 0.5) / aa, (b + 0.5) / aa) for b in range(aa) for a in range(aa)]


@torch.no_grad()
def render(scene: Scene, size: int | tuple[int, int], aa: int = 2, device: str | torch.device = "cpu") -> RenderOutput:
    """Render `scene` at `size` (S or (H, W)) pixels with aa x aa samples per pixel, computing
    on `device`; the output is on the CPU."""
    height, width = (size, size) if isinstance(size, int) else size
    if height < 1 or width < 1 or aa < 1:
        raise ValueError(f"size {height}x{width} and aa={aa} must be positive")
    with creating_on(device):
        out = _render(scene, height, width, aa)
    return RenderOutput(**{f: getattr(out, f).cpu() for f in RenderOutput.__dataclass_fields__})


def _render(scene: Scene, height: int, width: int, aa: int) -> RenderOutput:
    geo = SceneGeometry(scene)
    offsets = [(0.5, 0.5)] + (subpixel_offsets(aa) if aa > 1 else [])
    xy = pixel_grid(height, width, offsets)  # (samples, H*W, 2): centre first, then the AA grid
    origins, dirs = camera_rays(scene.camera, xy.reshape(-1, 2), height, width)
    traced = _trace_chunks(geo, origins, dirs)  # one batch for all samples: fewer, fuller steps
    n = height * width
    truth = RayTruth(*(getattr(traced, f)[:n] for f in RayTruth.__dataclass_fields__))
    rgb = truth.rgb if aa == 1 else traced.rgb[n:].reshape(aa * aa, n, 3).mean(0)
    dirs = dirs[:n]
    depth = truth.t * (dirs @ camera_frame(scene.camera)[1])  # z-depth: along the camera's forward axis

    ids = {k: v.reshape(height, width) for k, v in geo.labels(truth.object_id).items()}

    def img(t: Tensor) -> Tensor:
        return t.reshape(height, width, *t.shape[1:])

    return RenderOutput(img(rgb), img(depth), img(truth.normal), albedo=img(truth.albedo), lit=img(truth.lit), **ids)


def factor_table(scene: Scene, out: RenderOutput) -> list[dict]:
    """Per object: its factors from the scene spec and what the image shows of it."""
    rows = []
    n_pixels = out.object_id.numel()
    for i, o in enumerate(scene.objects):
        mask = out.object_id == i
        count = int(mask.sum())
        row = {"object_id": i, "kind": o.kind, "kind_id": KINDS.index(o.kind), "material": o.material,
               "material_id": MATERIALS.index(o.material), "texture": o.texture.kind,
               "texture_id": TEXTURES.index(o.texture.kind), "albedo": list(o.albedo), "position": list(o.position),
               "size": list(o.size), "rotation": list(o.rotation), "pixel_fraction": count / n_pixels,
               "visible": count > 0}
        if count:
            rows_i, cols_i = mask.nonzero(as_tuple=True)
            row["bbox"] = [int(rows_i.min()), int(cols_i.min()), int(rows_i.max()) + 1, int(cols_i.max()) + 1]
            row["mean_depth"] = float(out.depth[mask].mean())
            row["lit_fraction"] = out.lit[mask].float().mean(0).tolist()
        rows.append(row)
    return rows
