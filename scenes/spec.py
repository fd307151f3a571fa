"""The scene description: typed, validated, and round-tripping through JSON.

World frame: y is up, the ground plane (when present) is the plane y = height. Sizes are in
world units; rotations are Euler angles in degrees applied about x, then y, then z."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from ctxsae_common.errors import InputError

KINDS = ("sphere", "box", "cylinder", "torus", "plane")
MATERIALS = ("matte", "glossy", "emissive")
TEXTURES = ("none", "stripes", "checker", "noise")
LIGHT_KINDS = ("directional", "point")
BACKGROUNDS = ("flat", "gradient", "sky")

# What the three numbers of `size` mean for each kind.
SIZE_MEANING = {
    "sphere": "(radius, unused, unused)",
    "box": "(half-width x, half-height y, half-depth z)",
    "cylinder": "(radius, half-height, unused)",
    "torus": "(major radius, minor radius, unused)",
    "plane": "(unused, unused, unused): the plane is infinite",
}


class SceneError(InputError):
    """An invalid scene: one line naming the field, the value and the fix."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise SceneError(message)


def _vec3(value: Any, name: str) -> tuple[float, float, float]:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise SceneError(f"{name}={value!r} must be three numbers") from None
    _require(len(out) == 3, f"{name}={value!r} must be three numbers, got {len(out)}")
    _require(all(math.isfinite(v) for v in out), f"{name}={value!r} must be finite")
    return out  # type: ignore[return-value]


def _colour(value: Any, name: str) -> tuple[float, float, float]:
    out = _vec3(value, name)
    _require(all(v >= 0 for v in out), f"{name}={value!r}: colour channels must be >= 0")
    return out


def _one_of(value: str, allowed: tuple[str, ...], name: str) -> None:
    _require(value in allowed, f"{name}={value!r} is not one of {', '.join(allowed)}")


@dataclass(frozen=True)
class Texture:
    """A procedural pattern mixing the albedo with `colour2`: stripes (along local x), checker
    (3D cells), or value noise; `scale` is the pattern's period in world units."""

    kind: str = "none"
    scale: float = 0.25
    colour2: tuple[float, float, float] = (0.1, 0.1, 0.1)
    seed: int = 0  # noise only

    def __post_init__(self) -> None:
        _one_of(self.kind, TEXTURES, "texture.kind")
        _require(self.scale > 0, f"texture.scale={self.scale} must be > 0")
        object.__setattr__(self, "colour2", _colour(self.colour2, "texture.colour2"))


@dataclass(frozen=True)
class SceneObject:
    """One primitive: `size` as in SIZE_MEANING, albedo in linear RGB [0, 1], `emission` the
    radiance an emissive object gives off (times its albedo)."""

    kind: str
    position: tuple[float, float, float] = (0.0, 0.0, 0.0)
    size: tuple[float, float, float] = (0.5, 0.5, 0.5)
    rotation: tuple[float, float, float] = (0.0, 0.0, 0.0)
    albedo: tuple[float, float, float] = (0.8, 0.8, 0.8)
    material: str = "matte"
    texture: Texture = field(default_factory=Texture)
    emission: float = 1.0

    def __post_init__(self) -> None:
        _one_of(self.kind, KINDS, "object.kind")
        _one_of(self.material, MATERIALS, "object.material")
        object.__setattr__(self, "position", _vec3(self.position, "object.position"))
        object.__setattr__(self, "size", _vec3(self.size, "object.size"))
        object.__setattr__(self, "rotation", _vec3(self.rotation, "object.rotation"))
        object.__setattr__(self, "albedo", _colour(self.albedo, "object.albedo"))
        if isinstance(self.texture, dict):
            object.__setattr__(self, "texture", Texture(**self.texture))
        used = {"sphere": 1, "box": 3, "cylinder": 2, "torus": 2, "plane": 0}[self.kind]
        _require(all(s > 0 for s in self.size[:used]),
                 f"object.size={self.size} of a {self.kind} must be positive in {SIZE_MEANING[self.kind]}")
        if self.kind == "torus":
            _require(self.size[1] < self.size[0], f"torus size={self.size}: the minor radius must be below the major")
        _require(self.emission >= 0, f"object.emission={self.emission} must be >= 0")

    @property
    def bounding_radius(self) -> float:
        """Radius of a sphere about `position` that holds the object (inf for a plane)."""
        s = self.size
        return {"sphere": s[0], "box": math.sqrt(s[0] ** 2 + s[1] ** 2 + s[2] ** 2),
                "cylinder": math.hypot(s[0], s[1]), "torus": s[0] + s[1], "plane": math.inf}[self.kind]


@dataclass(frozen=True)
class Light:
    """A directional light shines along `direction`; a point light sits at `position` and falls
    off with the inverse square of distance. `intensity` scales `colour`."""

    kind: str = "directional"
    direction: tuple[float, float, float] = (-0.4, -1.0, -0.3)
    position: tuple[float, float, float] = (2.0, 4.0, 2.0)
    colour: tuple[float, float, float] = (1.0, 1.0, 1.0)
    intensity: float = 1.0

    def __post_init__(self) -> None:
        _one_of(self.kind, LIGHT_KINDS, "light.kind")
        object.__setattr__(self, "direction", _vec3(self.direction, "light.direction"))
        object.__setattr__(self, "position", _vec3(self.position, "light.position"))
        object.__setattr__(self, "colour", _colour(self.colour, "light.colour"))
        _require(self.intensity >= 0, f"light.intensity={self.intensity} must be >= 0")
        _require(self.kind != "directional" or any(self.direction),
                 "light.direction must not be (0, 0, 0) for a directional light")


@dataclass(frozen=True)
class Camera:
    """A pinhole camera at `eye` looking at `target`, y up; `fov` is the vertical field of view
    in degrees."""

    eye: tuple[float, float, float] = (0.0, 2.0, 6.0)
    target: tuple[float, float, float] = (0.0, 0.5, 0.0)
    fov: float = 40.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "eye", _vec3(self.eye, "camera.eye"))
        object.__setattr__(self, "target", _vec3(self.target, "camera.target"))
        _require(0 < self.fov < 170, f"camera.fov={self.fov} must lie in (0, 170) degrees")
        _require(self.eye != self.target, "camera.eye and camera.target must differ")
        look = [t - e for t, e in zip(self.target, self.eye)]
        _require(math.hypot(look[0], look[2]) > 1e-6 * math.hypot(*look),
                 "camera looks straight up or down: move camera.eye sideways of camera.target")


@dataclass(frozen=True)
class Background:
    """What a ray that hits nothing sees, by its direction: `flat` colour; `gradient` from
    `colour` (looking down) to `colour2` (looking up); `sky`: horizon `colour` to zenith
    `colour2` with a sun glow toward the first directional light."""

    kind: str = "gradient"
    colour: tuple[float, float, float] = (0.55, 0.6, 0.7)
    colour2: tuple[float, float, float] = (0.15, 0.25, 0.5)

    def __post_init__(self) -> None:
        _one_of(self.kind, BACKGROUNDS, "background.kind")
        object.__setattr__(self, "colour", _colour(self.colour, "background.colour"))
        object.__setattr__(self, "colour2", _colour(self.colour2, "background.colour2"))


@dataclass(frozen=True)
class Scene:
    """1 to 6 objects (a ground plane counts as one), 1 to 3 lights, a camera, a background.
    An object's id is its index in `objects`."""

    objects: tuple[SceneObject, ...]
    lights: tuple[Light, ...] = (Light(),)
    camera: Camera = field(default_factory=Camera)
    background: Background = field(default_factory=Background)
    ambient: float = 0.08
    seed: int | None = None  # the sampler's seed, when the scene came from one

    def __post_init__(self) -> None:
        object.__setattr__(self, "objects", tuple(o if isinstance(o, SceneObject) else SceneObject(**o)
                                                  for o in self.objects))
        object.__setattr__(self, "lights", tuple(o if isinstance(o, Light) else Light(**o) for o in self.lights))
        if isinstance(self.camera, dict):
            object.__setattr__(self, "camera", Camera(**self.camera))
        if isinstance(self.background, dict):
            object.__setattr__(self, "background", Background(**self.background))
        _require(1 <= len(self.objects) <= 6, f"a scene has 1 to 6 objects, got {len(self.objects)}")
        _require(1 <= len(self.lights) <= 3, f"a scene has 1 to 3 lights, got {len(self.lights)}")
        _require(sum(o.kind == "plane" for o in self.objects) <= 1, "a scene has at most one ground plane")
        _require(self.ambient >= 0, f"ambient={self.ambient} must be >= 0")

    def to_dict(self) -> dict:
        """A JSON-ready dict; `from_dict` inverts it."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """The scene as indented JSON."""
        return json.dumps(self.to_dict())

    @staticmethod
    def from_dict(values: dict) -> "Scene":
        """A validated scene from a dict, with one-line errors naming the field."""
        known = {f.name for f in dataclasses.fields(Scene)}
        unknown = sorted(set(values) - known)
        _require(not unknown, f"unknown scene field(s) {unknown}: expected {sorted(known)}")
        try:
            return Scene(**values)
        except TypeError as e:  # an unknown field inside an object, light, camera or background
            raise SceneError(f"invalid scene: {e}") from None

    @staticmethod
    def from_json(text: str) -> "Scene":
        """A validated scene from JSON text."""
        try:
            values = json.loads(text)
        except json.JSONDecodeError as e:
            raise SceneError(f"scene JSON does not parse: {e}") from None
        return Scene.from_dict(values)


def kind_id(kind: str) -> int:
    """The index of a primitive kind in KINDS."""
    return KINDS.index(kind)


def material_id(material: str) -> int:
    """The index of a material in MATERIALS."""
    return MATERIALS.index(material)


def texture_id(texture: str) -> int:
    """The index of a texture in TEXTURES."""
    return TEXTURES.index(texture)
