"""A scene as tensors: exact signed distance functions of the primitives, and the procedural
textures, evaluated at batches of 3D points (N, 3).

Every SDF is exact (1-Lipschitz), so sphere tracing may step by its value; sizes are
parameters of the SDF rather than a scaling of space, which would break that. Formulas follow
Quilez, "Distance functions" (iquilezles.org/articles/distfunctions)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from scenes.spec import KINDS, MATERIALS, TEXTURES, Scene, SceneObject


def rotation_matrix(degrees: tuple[float, float, float]) -> Tensor:
    """R = Rz Ry Rx: rotate about x, then y, then z (degrees). Local = R^T (world - position)."""
    ax, ay, az = (math.radians(a) for a in degrees)
    cx, sx, cy, sy, cz, sz = math.cos(ax), math.sin(ax), math.cos(ay), math.sin(ay), math.cos(az), math.sin(az)
    rx = torch.tensor([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = torch.tensor([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = torch.tensor([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return (rz @ ry @ rx).float()


def sdf_local(kind: str, p: Tensor, size: tuple[float, float, float]) -> Tensor:
    """Signed distance (N,) of local points p (N, 3) to a primitive centred at the origin."""
    if kind == "sphere":
        return p.norm(dim=-1) - size[0]
    if kind == "box":
        q = p.abs() - p.new_tensor(size)
        return q.clamp(min=0).norm(dim=-1) + q.max(dim=-1).values.clamp(max=0)
    if kind == "cylinder":  # axis along local y
        d = torch.stack([p[:, [0, 2]].norm(dim=-1) - size[0], p[:, 1].abs() - size[1]], dim=-1)
        return d.max(dim=-1).values.clamp(max=0) + d.clamp(min=0).norm(dim=-1)
    if kind == "torus":  # ring in the local xz plane
        q = torch.stack([p[:, [0, 2]].norm(dim=-1) - size[0], p[:, 1]], dim=-1)
        return q.norm(dim=-1) - size[1]
    if kind == "plane":  # the local plane y = 0, solid below
        return p[:, 1]
    raise ValueError(f"unknown primitive kind {kind!r}")


def _hash01(cells: Tensor, seed: int) -> Tensor:
    """A deterministic pseudo-random value in [0, 1) per integer lattice cell (..., 3)."""
    h = cells[..., 0] * 1619 + cells[..., 1] * 31337 + cells[..., 2] * 6971 + seed * 1013
    h = (h ^ (h >> 13)) * 1274126177
    h = h ^ (h >> 16)
    return (h & 0xFFFFFF).float() / float(1 << 24)


def value_noise(p: Tensor, seed: int) -> Tensor:
    """Smooth 3D value noise in [0, 1] at points p (N, 3), period-1 lattice."""
    base = torch.floor(p)
    f = p - base
    f = f * f * (3 - 2 * f)  # smoothstep fade
    cell = base.long()
    out = torch.zeros(p.shape[0], dtype=p.dtype, device=p.device)
    for corner in range(8):
        offset = torch.tensor([(corner >> i) & 1 for i in range(3)], device=p.device)
        w = torch.where(offset.bool(), f, 1 - f).prod(dim=-1)
        out = out + w * _hash01(cell + offset, seed)
    return out


def texture_mix(obj: SceneObject, p_local: Tensor) -> Tensor:
    """How much of colour2 the texture mixes in at local points (N,), in [0, 1]. Cells are
    offset by a quarter period so that a face through the origin does not sit on a boundary."""
    tex = obj.texture
    q = p_local / tex.scale + 0.25
    if tex.kind == "none":
        return p_local.new_zeros(p_local.shape[0])
    if tex.kind == "stripes":
        return torch.remainder(torch.floor(q[:, 0]), 2)
    if tex.kind == "checker":
        return torch.remainder(torch.floor(q).sum(dim=-1), 2)
    return value_noise(q, tex.seed)


class SceneGeometry:
    """The scene's objects packed for batched queries."""

    def __init__(self, scene: Scene):
        self.scene = scene
        self.objects = scene.objects
        self.rotations = [rotation_matrix(o.rotation) for o in self.objects]
        self.positions = [torch.tensor(o.position, dtype=torch.float32) for o in self.objects]
        self.kind_ids = torch.tensor([KINDS.index(o.kind) for o in self.objects])
        self.material_ids = torch.tensor([MATERIALS.index(o.material) for o in self.objects])
        self.texture_ids = torch.tensor([TEXTURES.index(o.texture.kind) for o in self.objects])

    def to_local(self, i: int, p: Tensor) -> Tensor:
        """Points p (N, 3) in object i's own frame (N, 3)."""
        return (p - self.positions[i]) @ self.rotations[i]  # row form of R^T (p - c)

    def sdf_all(self, p: Tensor) -> Tensor:
        """Signed distance of points (N, 3) to every object: (N, n_objects)."""
        return torch.stack([sdf_local(o.kind, self.to_local(i, p), o.size) for i, o in enumerate(self.objects)], -1)

    def sdf(self, p: Tensor) -> tuple[Tensor, Tensor]:
        """Scene SDF (N,) (the union: min over objects) and the id (N,) of the nearest object."""
        d = self.sdf_all(p)
        dist, oid = d.min(dim=-1)
        return dist, oid

    def normals(self, p: Tensor, oid: Tensor, eps: float = 1e-4) -> Tensor:
        """Unit outward normals (N, 3) of object `oid` at points p, from its own SDF by the
        tetrahedron central difference (so a contact between two objects does not blend them)."""
        k = p.new_tensor([[1, -1, -1], [-1, -1, 1], [-1, 1, -1], [1, 1, 1]])  # (4, 3)
        n = p.new_zeros(p.shape)
        for v in k:
            d = self.sdf_all(p + eps * v).gather(1, oid[:, None])[:, 0]
            n = n + v * d[:, None]
        return torch.nn.functional.normalize(n, dim=-1)

    def albedo(self, p: Tensor, oid: Tensor) -> Tensor:
        """Textured albedo (N, 3) of object `oid` at world points p."""
        out = p.new_zeros(p.shape)
        for i, o in enumerate(self.objects):
            sel = oid == i
            if not sel.any():
                continue
            m = texture_mix(o, self.to_local(i, p[sel]))[:, None]
            out[sel] = (1 - m) * p.new_tensor(o.albedo) + m * p.new_tensor(o.texture.colour2)
        return out

    def labels(self, oid: Tensor) -> dict[str, Tensor]:
        """Object, kind, material and texture ids (N,) of objects `oid` (N,); -1 where oid < 0
        (background, nothing hit)."""
        none = torch.full_like(oid, -1)
        safe = oid.clamp(min=0)
        return {"object_id": torch.where(oid >= 0, oid, none),
                **{name: torch.where(oid >= 0, table[safe], none)
                   for name, table in (("kind_id", self.kind_ids), ("material_id", self.material_ids),
                                       ("texture_id", self.texture_ids))}}

    def emission(self, oid: Tensor) -> Tensor:
        """Emission strength (N,) of object `oid`; zero unless its material is emissive."""
        table = torch.tensor([o.emission if o.material == "emissive" else 0.0 for o in self.objects])
        return table[oid]
