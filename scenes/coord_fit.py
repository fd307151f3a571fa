"""Fitting coordinate MLPs to a scene and checking them against its exact ground truth.

`fit_image`: colour as a function of a 2D image coordinate, trained on 75% of the pixels of a
render; checked by PSNR at the held-out pixels and against the scene's own colour at random
continuous coordinates, broken down by the object, material and texture there.

`fit_radiance`: a radiance field from renders of several camera views; checked by PSNR on
held-out views and, since the scene is known everywhere, by the fitted occupancy at random 3D
points, the colour at surface points and the depth along rays, broken down the same way."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor
from tqdm import tqdm

from scenes.coord_mlp import COORD_KINDS, CoordMLP, RadianceField
from ctxsae_common.device import creating_on
from scenes.geometry import SceneGeometry
from scenes.query import point_truth, surface_radiance
from scenes.raycast import camera_rays, pixel_grid, trace
from scenes.render import render
from scenes.sampler import SamplerConfig
from scenes.spec import KINDS, MATERIALS, TEXTURES, Camera, Scene, SceneError
from scenes.volume import Bounds, render_rays

# The scenes radiance fits default to: three objects and no ground plane (an infinite plane
# does not fit inside the bounding sphere).
RADIANCE_SAMPLER = SamplerConfig(n_objects=(3, 3), ground_plane=0.0)

# Opacity over this step stands for the field's density when compared with the solid truth.
OCCUPANCY_STEP = 0.05


@dataclass(frozen=True)
class FitConfig:
    """How a coordinate MLP is fitted. lr None: 5e-3 for fourier, 1e-4 for siren (Sitzmann et al.)."""

    kind: str = "fourier"
    size: int = 64
    hidden: int = 128
    layers: int = 4
    steps: int = 2000
    max_minutes: float | None = None  # stop early once this much time has passed
    lr: float | None = None
    batch: int = 4096  # pixels per step (image) or rays per step (radiance: batch // 4)
    eval_every: int = 250
    views: int = 24  # radiance: training views
    heldout_views: int = 4
    samples: int = 48  # radiance: samples per ray
    seed: int = 0
    progress: bool = True
    device: str = "cpu"  # where the model and the rays live ("cuda" on a GPU); random draws stay on the CPU

    def __post_init__(self) -> None:
        if self.kind not in COORD_KINDS:
            raise SceneError(f"kind={self.kind!r} is not one of {', '.join(COORD_KINDS)}")
        for name in ("size", "hidden", "layers", "steps", "batch", "eval_every", "views", "heldout_views", "samples"):
            if getattr(self, name) < 1:
                raise SceneError(f"{name}={getattr(self, name)} must be at least 1")

    @property
    def learning_rate(self) -> float:
        """The learning rate in use: `lr`, or the default for the MLP kind."""
        return self.lr if self.lr is not None else {"fourier": 5e-3, "siren": 1e-4}[self.kind]


def psnr(a: Tensor, b: Tensor) -> float:
    """-10 log10(MSE) for images in [0, 1]."""
    return float(-10 * torch.log10(((a - b) ** 2).mean().clamp(min=1e-12)))


def breakdown(errors: Tensor, labels: dict[str, Tensor]) -> dict[str, dict[str, float]]:
    """Mean of `errors` (N,) per value of each label (N,), keyed by readable names."""
    names = {"object_id": None, "kind_id": KINDS, "material_id": MATERIALS, "texture_id": TEXTURES}
    out: dict[str, dict[str, float]] = {}
    for key, lab in labels.items():
        table = names.get(key)
        groups = {}
        for v in lab.unique().tolist():
            name = "background" if v < 0 else (table[v] if table else str(v))
            groups[name] = float(errors[lab == v].mean())
        out[key.removesuffix("_id")] = groups
    return out


FIT_TARGETS = ("image", "radiance")


def build_model(target: str, cfg: FitConfig) -> torch.nn.Module:
    """The untrained coordinate MLP that fits `target` ('image' or 'radiance') under `cfg`."""
    if target == "image":
        return CoordMLP(2, 3, cfg.kind, cfg.hidden, cfg.layers)
    if target == "radiance":
        return RadianceField(cfg.kind, cfg.hidden, cfg.layers)
    raise SceneError(f"fit target {target!r} is not one of {', '.join(FIT_TARGETS)}")


@dataclass
class FitResult:
    """What a fit returns: the model, its metrics against the truth, the history and figures' images."""

    model: torch.nn.Module
    metrics: dict
    history: list[dict] = field(default_factory=list)
    images: dict[str, Tensor] = field(default_factory=dict)  # for figures: truth, fit, depth...


def _loop(cfg: FitConfig, params, step_loss, evaluate, desc: str) -> tuple[list[dict], float]:
    """The shared training loop: Adam with cosine decay, periodic evaluation, a time budget."""
    opt = torch.optim.Adam(params, lr=cfg.learning_rate)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1, s / cfg.steps))))
    history, start = [], time.perf_counter()
    bar = tqdm(range(1, cfg.steps + 1), desc=desc, disable=not cfg.progress)
    for step in bar:
        loss = step_loss(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        elapsed = time.perf_counter() - start
        out_of_time = cfg.max_minutes is not None and elapsed > 60 * cfg.max_minutes
        if step % cfg.eval_every == 0 or step == cfg.steps or out_of_time:
            with torch.no_grad():
                history.append({"step": step, "seconds": elapsed, "train_loss": float(loss), **evaluate()})
            bar.set_postfix(history[-1])
        if out_of_time:
            break
    return history, time.perf_counter() - start


def _image_coords(xy: Tensor, size: int) -> Tensor:
    return 2 * xy / size - 1  # pixels -> [-1, 1]


def fit_image(scene: Scene, cfg: FitConfig) -> FitResult:
    """Fit RGB(x, y) to a render of `scene` at cfg.size, holding out a quarter of the pixels."""
    with creating_on(cfg.device):
        return _on_cpu(_fit_image(scene, cfg))


def fit_radiance(scene: Scene, cfg: FitConfig) -> FitResult:
    """Fit a radiance field to cfg.views renders (centre ray per pixel, so a render is exactly
    the colour along the rays the field is trained on) and check it on held-out views."""
    with creating_on(cfg.device):
        return _on_cpu(_fit_radiance(scene, cfg))


def _on_cpu(result: FitResult) -> FitResult:
    """The fit's model and figure images moved to the CPU."""
    return FitResult(result.model.cpu(), result.metrics, result.history, {k: v.cpu() for k, v in result.images.items()})


def _cpu_draw(draw, *args, **kwargs) -> Tensor:
    """A seeded draw made on the CPU (where the generators live), moved to the current device."""
    return draw(*args, **kwargs, device="cpu").to(torch.get_default_device())


def _fit_image(scene: Scene, cfg: FitConfig) -> FitResult:
    torch.manual_seed(cfg.seed)
    target = render(scene, cfg.size, aa=2, device=torch.get_default_device()).rgb.reshape(-1, 3).to(
        torch.get_default_device())
    xy = pixel_grid(cfg.size, cfg.size, [(0.5, 0.5)])[0]
    coords = _image_coords(xy, cfg.size)
    perm = _cpu_draw(torch.randperm, coords.shape[0], generator=torch.Generator().manual_seed(cfg.seed))
    n_train = int(0.75 * coords.shape[0])
    train, held = perm[:n_train], perm[n_train:]
    model = build_model("image", cfg)
    gen = torch.Generator().manual_seed(cfg.seed + 1)

    def step_loss(step: int) -> Tensor:
        idx = train[_cpu_draw(torch.randint, n_train, (min(cfg.batch, n_train),), generator=gen)]
        return ((model(coords[idx]) - target[idx]) ** 2).mean()

    def evaluate() -> dict:
        return {"heldout_psnr": psnr(model(coords[held]), target[held])}

    history, seconds = _loop(cfg, model.parameters(), step_loss, evaluate, "fit image")
    with torch.no_grad():
        fit = model(coords).clamp(0, 1)
        # the scene's own colour at random continuous coordinates (no pixel filter)
        cont = _cpu_draw(torch.rand, 8192, 2, generator=torch.Generator().manual_seed(cfg.seed + 2)) * cfg.size
        geo = SceneGeometry(scene)
        truth = trace(geo, *camera_rays(scene.camera, cont, cfg.size, cfg.size))
        pred = model(_image_coords(cont, cfg.size)).clamp(0, 1)
    err = ((pred - truth.rgb) ** 2).mean(-1)
    labels = geo.labels(truth.object_id)
    metrics = {"kind": cfg.kind, "size": cfg.size, "steps": history[-1]["step"], "train_seconds": seconds,
               "train_psnr": psnr(fit[train], target[train]), "heldout_psnr": psnr(fit[held], target[held]),
               "continuous_psnr": psnr(pred, truth.rgb),
               "continuous_mse_by": breakdown(err, labels)}
    images = {"truth": target.reshape(cfg.size, cfg.size, 3), "fit": fit.reshape(cfg.size, cfg.size, 3)}
    return FitResult(model, metrics, history, images)


def scene_bounds(scene: Scene, margin: float = 0.3) -> Bounds:
    """A sphere about (0, 0.4, 0) holding every solid object, with a margin."""
    centre = (0.0, 0.4, 0.0)
    reach = [math.dist(o.position, centre) + o.bounding_radius for o in scene.objects if o.kind != "plane"]
    return Bounds(centre, max(reach, default=1.0) + margin)


def orbit_cameras(camera: Camera, n: int, offset: float) -> list[Camera]:
    """n cameras around the target at the scene camera's distance, azimuths evenly spaced
    (starting `offset` of a step past the scene camera), elevations between 15 and 45 degrees."""
    eye, target = torch.tensor(camera.eye), torch.tensor(camera.target)
    rel = eye - target
    dist = float(rel.norm())
    az0 = math.atan2(float(rel[2]), float(rel[0]))
    cams = []
    for i in range(n):
        az = az0 + 2 * math.pi * (i + offset) / n
        el = math.radians(15 + 30 * ((i * 0.618) % 1))
        e = (target[0] + dist * math.cos(el) * math.cos(az), target[1] + dist * math.sin(el),
             target[2] + dist * math.cos(el) * math.sin(az))
        cams.append(Camera(tuple(float(v) for v in e), camera.target, camera.fov))
    return cams


def _view_rays(camera: Camera, size: int) -> tuple[Tensor, Tensor]:
    return camera_rays(camera, pixel_grid(size, size, [(0.5, 0.5)])[0], size, size)


def render_field(field: RadianceField, camera: Camera, size: int, bounds: Bounds, samples: int, chunk: int = 4096):
    """Volume-render a radiance field from a camera: colour (size * size, 3) and expected depth
    (size * size,), rays in chunks."""
    o, d = _view_rays(camera, size)
    parts = [render_rays(field, o[i : i + chunk], d[i : i + chunk], bounds, samples) for i in range(0, o.shape[0], chunk)]
    return torch.cat([p.rgb for p in parts]), torch.cat([p.depth for p in parts])


def _fit_radiance(scene: Scene, cfg: FitConfig) -> FitResult:
    torch.manual_seed(cfg.seed)
    geo = SceneGeometry(scene)
    bounds = scene_bounds(scene)
    train_cams = orbit_cameras(scene.camera, cfg.views, 0.0)
    held_cams = orbit_cameras(scene.camera, cfg.heldout_views, 0.5 * cfg.heldout_views / cfg.views)  # between training views
    rays = [_view_rays(c, cfg.size) for c in train_cams]
    origins, dirs = torch.cat([r[0] for r in rays]), torch.cat([r[1] for r in rays])
    target = torch.cat([trace(geo, o, d).rgb for o, d in rays])
    held = [(c, *_view_rays(c, cfg.size)) for c in held_cams]
    held_truth = [trace(geo, o, d) for _, o, d in held]
    field = build_model("radiance", cfg)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    batch = max(1, cfg.batch // 4)

    def step_loss(step: int) -> Tensor:
        idx = _cpu_draw(torch.randint, origins.shape[0], (batch,), generator=gen)
        out = render_rays(field, origins[idx], dirs[idx], bounds, cfg.samples, gen)
        return ((out.rgb - target[idx]) ** 2).mean()

    def evaluate() -> dict:
        rgb, _ = render_field(field, held_cams[0], cfg.size, bounds, cfg.samples)
        return {"heldout_view0_psnr": psnr(rgb, held_truth[0].rgb)}

    history, seconds = _loop(cfg, field.parameters(), step_loss, evaluate, "fit radiance field")
    with torch.no_grad():
        renders = [render_field(field, c, cfg.size, bounds, cfg.samples) for c in held_cams]
        metrics = {"kind": cfg.kind, "size": cfg.size, "views": cfg.views, "steps": history[-1]["step"],
                   "train_seconds": seconds, "bounds": {"centre": bounds.centre, "radius": bounds.radius},
                   "heldout_psnr": psnr(torch.cat([r[0] for r in renders]), torch.cat([t.rgb for t in held_truth])),
                   "heldout_psnr_per_view": [psnr(r[0], t.rgb) for r, t in zip(renders, held_truth)],
                   **_pointwise_checks(field, geo, bounds, held, held_truth, [r[1] for r in renders], cfg)}
    images = {"truth": held_truth[0].rgb.reshape(cfg.size, cfg.size, 3),
              "fit": renders[0][0].clamp(0, 1).reshape(cfg.size, cfg.size, 3),
              "truth_depth": held_truth[0].t.reshape(cfg.size, cfg.size),
              "fit_depth": renders[0][1].reshape(cfg.size, cfg.size)}
    return FitResult(field, metrics, history, images)


def _pointwise_checks(field, geo, bounds, held, held_truth, held_depth, cfg) -> dict:
    """Occupancy at random points, colour at surface points and depth along held-out rays
    (`held_depth`: the field's expected depth per held-out view, already rendered)."""
    gen = torch.Generator().manual_seed(cfg.seed + 3)
    d = torch.nn.functional.normalize(_cpu_draw(torch.randn, 20000, 3, generator=gen), dim=-1)
    r = bounds.radius * _cpu_draw(torch.rand, 20000, 1, generator=gen) ** (1 / 3)
    points = torch.tensor(bounds.centre) + d * r  # uniform in the bounding sphere
    truth = point_truth(geo, points)
    sigma, _ = field(points, d)
    occupancy = 1 - torch.exp(-sigma * OCCUPANCY_STEP)
    occ_err = (occupancy - truth.inside.float()).abs()
    labels = {k: getattr(truth, k) for k in ("object_id", "kind_id", "material_id", "texture_id")}
    # surfaces seen from the held-out views
    o = torch.cat([h[1] for h in held])
    dirs = torch.cat([h[2] for h in held])
    tt = torch.cat([t.t for t in held_truth])
    hit = torch.cat([t.hit for t in held_truth])
    sp = o[hit] + tt[hit, None] * dirs[hit]
    true_c = surface_radiance(geo, sp, dirs[hit])
    _, fit_c = field(sp, dirs[hit])
    col_err = (fit_c - true_c).abs().mean(-1)
    sur_labels = geo.labels(torch.cat([t.object_id for t in held_truth])[hit])
    depth = torch.cat(held_depth)[hit]
    depth_err = (depth - tt[hit]).abs()
    return {"occupancy_step": OCCUPANCY_STEP,
            "occupancy_abs_error": float(occ_err.mean()),
            "occupancy_accuracy": float(((occupancy > 0.5) == truth.inside).float().mean()),
            "occupancy_abs_error_by": breakdown(occ_err, labels),
            "surface_colour_abs_error": float(col_err.mean()),
            "surface_colour_abs_error_by": breakdown(col_err, sur_labels),
            "depth_abs_error": float(depth_err.mean()),
            "depth_abs_error_by": breakdown(depth_err, sur_labels)}
