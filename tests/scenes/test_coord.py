import math

import pytest
import torch

from scenes.cli import main
from scenes.coord_fit import FitConfig, breakdown, fit_image, fit_radiance, orbit_cameras, psnr
from scenes.coord_mlp import CoordMLP, PositionalEncoding
from scenes.sampler import SamplerConfig, sample_scene
from scenes.spec import Camera, SceneError
from scenes.volume import Bounds, composite, ray_sphere


def test_positional_encoding_hand_computed():
    enc = PositionalEncoding(1, 2)(torch.tensor([[0.25]]))
    s = math.sqrt(0.5)
    assert enc[0].tolist() == pytest.approx([0.25, s, 1.0, s, 0.0], abs=1e-6)


def test_composite_hand_computed():
    # two samples at t = 1, 2 (far 3) with alpha 1/2 each: weights 1/2, 1/4; a quarter reaches the background
    sigma = torch.full((1, 2), math.log(2))
    rgb = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    out = composite(sigma, rgb, torch.tensor([[1.0, 2.0]]), torch.tensor([3.0]), torch.tensor([[0.0, 0.0, 1.0]]))
    assert out.weights[0].tolist() == pytest.approx([0.5, 0.25])
    assert out.rgb[0].tolist() == pytest.approx([0.5, 0.25, 0.25])
    assert out.depth.item() == pytest.approx(0.5 * 1 + 0.25 * 2 + 0.25 * 3)


def test_ray_sphere():
    o = torch.tensor([[0.0, 0.4, -5.0], [0.0, 5.0, -5.0]])
    d = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    near, far = ray_sphere(o, d, Bounds((0.0, 0.4, 0.0), 2.0))
    assert near.tolist() == pytest.approx([3.0, far[1].item()]) and far[0].item() == pytest.approx(7.0)


def test_siren_initialisation_bounds():
    m = CoordMLP(2, 3, "siren", hidden=64, layers=3)
    assert m.linears[0].weight.abs().max() <= 1 / 2
    assert m.linears[1].weight.abs().max() <= math.sqrt(6 / 64) / 30
    with pytest.raises(ValueError, match="not one of"):
        CoordMLP(2, 3, "gabor")


def test_psnr_and_breakdown_hand_computed():
    assert psnr(torch.zeros(4), torch.full((4,), 0.1)) == pytest.approx(20.0, abs=1e-4)
    out = breakdown(torch.tensor([1.0, 3.0, 5.0]), {"kind_id": torch.tensor([0, 0, -1])})
    assert out == {"kind": {"sphere": 2.0, "background": 5.0}}


def test_image_fit_beats_the_mean_colour_by_far():
    scene = sample_scene(2)
    result = fit_image(scene, FitConfig(size=16, steps=150, eval_every=150, progress=False))
    target = result.images["truth"].reshape(-1, 3)
    baseline = psnr(target.mean(0).expand_as(target), target)
    assert result.metrics["heldout_psnr"] > baseline + 3  # measured: 25.7 vs 21.0 dB
    assert result.metrics["train_psnr"] > result.metrics["heldout_psnr"]


def test_radiance_fit_breakdowns_are_consistent():
    scene = sample_scene(1, SamplerConfig(n_objects=(2, 2), ground_plane=0.0))
    result = fit_radiance(scene, FitConfig(size=10, steps=10, eval_every=10, views=4, heldout_views=1, samples=12,
                                           batch=256, progress=False))
    m = result.metrics
    assert math.isfinite(m["heldout_psnr"]) and 0 <= m["occupancy_accuracy"] <= 1
    assert set(m["surface_colour_abs_error_by"]["object"]) <= {"0", "1"}
    # the overall error is a weighted mean of the per-object errors, so it lies between them
    assert min(m["occupancy_abs_error_by"]["object"].values()) <= m["occupancy_abs_error"] <= \
        max(m["occupancy_abs_error_by"]["object"].values())
    sigma, rgb = result.model(torch.zeros(5, 3), torch.nn.functional.normalize(torch.ones(5, 3), dim=-1))
    assert (sigma >= 0).all() and ((0 <= rgb) & (rgb <= 1)).all()


def test_orbit_cameras_keep_distance_and_heldout_views_differ():
    cam = Camera((0.0, 2.0, 5.0), (0.0, 0.4, 0.0), 40.0)
    train, held = orbit_cameras(cam, 8, 0.0), orbit_cameras(cam, 2, 0.5 * 2 / 8)
    dist = math.dist(cam.eye, cam.target)
    assert all(math.dist(c.eye, c.target) == pytest.approx(dist, rel=1e-5) for c in train + held)
    assert min(math.dist(h.eye[::2], t.eye[::2]) for h in held for t in train) > 0.3


def test_fit_config_and_cli_errors(tmp_path, capsys):
    with pytest.raises(SceneError, match="steps=0"):
        FitConfig(steps=0)
    (tmp_path / "s.json").write_text('{"objects": [{"kind": "box", "size": [1, -1, 1]}]}')
    assert main(["coord-fit", "--scene", str(tmp_path / "s.json"), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "object.size" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_coord_fit_cli_saves_a_fit_that_loads_equal(tmp_path):
    from scenes.io import load_fit

    out = tmp_path / "fit"
    assert main(["coord-fit", "--kind", "image", "--size", "12", "--steps", "20", "--scene-seed", "4", "--out", str(out),
                 "--no-progress"]) == 0
    target, scene, cfg, model = load_fit(out)
    assert target == "image" and scene == sample_scene(4) and cfg.steps == 20
    xy = torch.rand(50, 2) * 2 - 1
    again = load_fit(out)[3]
    torch.testing.assert_close(model(xy), again(xy), rtol=0, atol=0)
    import json
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["scene_seed"] == 4 and metrics["steps"] == 20
    (out / "model.safetensors").write_bytes((out / "model.safetensors").read_bytes()[:100])
    with pytest.raises(SceneError, match="unreadable fit"):
        load_fit(out)
    with pytest.raises(SceneError, match="not a coord-fit folder"):
        load_fit(tmp_path)


@pytest.mark.gpu
def test_an_image_fit_runs_on_cuda_and_returns_to_the_cpu():
    result = fit_image(sample_scene(3), FitConfig(size=16, steps=30, hidden=32, eval_every=10, progress=False,
                                                  device="cuda"))
    assert next(result.model.parameters()).device.type == "cpu" and result.metrics["heldout_psnr"] > 10
