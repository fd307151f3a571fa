"""Random scenes with controllable factor distributions: a seed and a `SamplerConfig` give one
scene, deterministically, so a data set is a list of seeds."""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass, field

import torch

from scenes.raycast import camera_frame
from scenes.spec import (
    BACKGROUNDS,
    KINDS,
    MATERIALS,
    TEXTURES,
    Background,
    Camera,
    Light,
    Scene,
    SceneError,
    SceneObject,
    Texture,
)

SOLID_KINDS = tuple(k for k in KINDS if k != "plane")


def _weights(table: dict[str, float], allowed: tuple[str, ...], name: str) -> dict[str, float]:
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise SceneError(f"{name}: unknown {unknown}; choose from {', '.join(allowed)}")
    if any(w < 0 for w in table.values()) or not any(w > 0 for w in table.values()):
        raise SceneError(f"{name}={table}: weights must be >= 0 with at least one > 0")
    return table


@dataclass(frozen=True)
class SamplerConfig:
    """Distributions of the scene factors. Weights need not sum to one."""

    n_objects: tuple[int, int] = (1, 5)  # solid objects, inclusive; a ground plane comes on top
    ground_plane: float = 0.8  # probability of a ground plane
    kinds: dict[str, float] = field(default_factory=lambda: {k: 1.0 for k in SOLID_KINDS})
    materials: dict[str, float] = field(default_factory=lambda: {"matte": 0.5, "glossy": 0.35, "emissive": 0.15})
    textures: dict[str, float] = field(default_factory=lambda: {"none": 0.55, "stripes": 0.15, "checker": 0.15,
                                                               "noise": 0.15})
    size_range: tuple[float, float] = (0.3, 0.7)  # the object's characteristic half-size
    n_lights: tuple[int, int] = (1, 3)
    point_light: float = 0.4  # probability that a light is a point light
    backgrounds: dict[str, float] = field(default_factory=lambda: {b: 1.0 for b in BACKGROUNDS})
    camera_distance: tuple[float, float] = (4.2, 6.0)
    camera_elevation: tuple[float, float] = (12.0, 40.0)  # degrees above the horizon
    fov: tuple[float, float] = (35.0, 45.0)
    spread: float = 1.5  # objects' centres lie within this radius of the origin
    require_in_view: bool = True  # every solid object's centre projects inside the image

    def __post_init__(self) -> None:
        lo, hi = self.n_objects
        if not (1 <= lo <= hi) or hi + (self.ground_plane > 0) > 6:
            raise SceneError(f"n_objects={self.n_objects}: need 1 <= low <= high and at most 6 objects with the plane")
        if not (1 <= self.n_lights[0] <= self.n_lights[1] <= 3):
            raise SceneError(f"n_lights={self.n_lights}: need 1 <= low <= high <= 3")
        if not (0 < self.size_range[0] <= self.size_range[1]):
            raise SceneError(f"size_range={self.size_range}: need 0 < low <= high")
        if not (0 <= self.ground_plane <= 1 and 0 <= self.point_light <= 1):
            raise SceneError("ground_plane and point_light are probabilities in [0, 1]")
        _weights(self.kinds, SOLID_KINDS, "kinds")
        _weights(self.materials, MATERIALS, "materials")
        _weights(self.textures, TEXTURES, "textures")
        _weights(self.backgrounds, BACKGROUNDS, "backgrounds")


def _pick(rng: random.Random, table: dict[str, float]) -> str:
    names = list(table)
    return rng.choices(names, weights=[table[n] for n in names])[0]


def _colour(rng: random.Random) -> tuple[float, float, float]:
    """A saturated colour: random hue, saturation 0.5-0.9, value 0.6-0.95."""
    import colorsys

    return colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.5, 0.9), rng.uniform(0.6, 0.95))


def _solid(rng: random.Random, cfg: SamplerConfig, kind: str) -> SceneObject:
    """A random object of `kind` resting on the ground (y >= 0) above the origin."""
    s = rng.uniform(*cfg.size_range)
    size, lift, rotation = {
        "sphere": ((s, 0.0, 0.0), s, (0.0, 0.0, 0.0)),
        "box": ((s * rng.uniform(0.6, 1.0), s * rng.uniform(0.6, 1.0), s * rng.uniform(0.6, 1.0)), None,
                (0.0, rng.uniform(0, 90), 0.0)),
        "cylinder": ((s * rng.uniform(0.5, 0.9), s, 0.0), s, (0.0, 0.0, 0.0)),
        "torus": ((s, s * rng.uniform(0.25, 0.45), 0.0), None, (rng.uniform(0, 70), rng.uniform(0, 180), 0.0)),
    }[kind]
    if kind == "box":
        lift = size[1]
    if kind == "torus":  # rest its lowest point on the ground, whatever the tilt
        lift = size[0] * math.sin(math.radians(rotation[0])) + size[1]
    material = _pick(rng, cfg.materials)
    tex = _pick(rng, cfg.textures)
    texture = Texture(tex, scale=rng.uniform(0.12, 0.3), colour2=_colour(rng), seed=rng.randrange(1 << 16)) \
        if tex != "none" else Texture()
    return SceneObject(kind, (0.0, lift, 0.0), size, rotation, _colour(rng), material, texture,
                       emission=rng.uniform(0.8, 1.2) if material == "emissive" else 1.0)


def _place(rng: random.Random, cfg: SamplerConfig, radii: list[float]) -> list[tuple[float, float]] | None:
    """Non-overlapping centres in the xz disc (bounding circles apart), or None after 200 tries."""
    placed: list[tuple[float, float, float]] = []
    for r in radii:
        for _ in range(200):
            a, d = rng.uniform(0, 2 * math.pi), cfg.spread * math.sqrt(rng.random())
            x, z = d * math.cos(a), d * math.sin(a)
            if all(math.hypot(x - px, z - pz) > r + pr + 0.05 for px, pz, pr in placed):
                placed.append((x, z, r))
                break
        else:
            return None
    return [(x, z) for x, z, _ in placed]


def _light(rng: random.Random, cfg: SamplerConfig) -> Light:
    warm = 0.3 * rng.random()  # from white to a warm tint
    colour = (1.0, 1.0 - warm / 2, 1.0 - warm)
    az, el = rng.uniform(0, 2 * math.pi), math.radians(rng.uniform(30, 70))
    toward = (math.cos(el) * math.cos(az), math.sin(el), math.cos(el) * math.sin(az))  # from the scene to the light
    if rng.random() < cfg.point_light:
        dist = rng.uniform(3.0, 5.0)
        return Light("point", position=tuple(dist * t for t in toward), colour=colour,
                     intensity=dist * dist * rng.uniform(0.6, 1.0))
    return Light("directional", direction=tuple(-t for t in toward), colour=colour, intensity=rng.uniform(0.6, 1.0))


def _camera(rng: random.Random, cfg: SamplerConfig) -> Camera:
    az, el = rng.uniform(0, 2 * math.pi), math.radians(rng.uniform(*cfg.camera_elevation))
    dist = rng.uniform(*cfg.camera_distance)
    eye = (dist * math.cos(el) * math.cos(az), dist * math.sin(el), dist * math.cos(el) * math.sin(az))
    return Camera(eye, (0.0, 0.4, 0.0), rng.uniform(*cfg.fov))


def project(camera: Camera, point: tuple[float, float, float], aspect: float = 1.0) -> tuple[float, float] | None:
    """Normalised image coordinates in [0, 1]^2 (x right, y down) of a world point, or None
    if it lies behind the camera."""
    eye, forward, right, up = camera_frame(camera)
    v = torch.tensor(point, dtype=torch.float32) - eye
    z = float(v @ forward)
    if z <= 0:
        return None
    half = math.tan(math.radians(camera.fov) / 2)
    sx, sy = float(v @ right) / (z * half * aspect), float(v @ up) / (z * half)
    return (sx + 1) / 2, (1 - sy) / 2


def check_in_view(scene: Scene, margin: float = 0.02) -> None:
    """Raise SceneError naming the first solid object whose centre the camera does not see."""
    for i, o in enumerate(scene.objects):
        if o.kind == "plane":
            continue
        uv = project(scene.camera, o.position)
        if uv is None or not all(margin <= c <= 1 - margin for c in uv):
            raise SceneError(f"object {i} ({o.kind} at {o.position}) is out of the camera's view: move it or "
                             "the camera, or sample with require_in_view=False")


def sample_scene(seed: int, cfg: SamplerConfig | None = None) -> Scene:
    """The scene of `seed` under `cfg`: the same seed always gives the same scene."""
    cfg = cfg or SamplerConfig()
    rng = random.Random(seed)
    for _ in range(100):
        n = rng.randint(*cfg.n_objects)
        kinds = [_pick(rng, cfg.kinds) for _ in range(n)]
        protos = [_solid(rng, cfg, k) for k in kinds]  # at the origin; placed below
        spots = _place(rng, cfg, [p.bounding_radius for p in protos])
        if spots is None:
            continue
        objects = [dataclasses.replace(p, position=(x, p.position[1], z)) for p, (x, z) in zip(protos, spots)]
        if rng.random() < cfg.ground_plane:
            tex = Texture("checker", scale=rng.uniform(0.4, 0.8), colour2=_colour(rng)) if rng.random() < 0.5 else Texture()
            objects.insert(0, SceneObject("plane", albedo=_colour(rng), texture=tex))
        lights = tuple(_light(rng, cfg) for _ in range(rng.randint(*cfg.n_lights)))
        bg = _pick(rng, cfg.backgrounds)
        scene = Scene(tuple(objects), lights, _camera(rng, cfg), Background(bg, _colour(rng), _colour(rng)),
                      seed=seed)
        if cfg.require_in_view:
            try:
                check_in_view(scene)
            except SceneError:
                continue
        return scene
    raise SceneError(f"no valid scene for seed {seed} in 100 tries: widen camera_distance or reduce n_objects/spread")
