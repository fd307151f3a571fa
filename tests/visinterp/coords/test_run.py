import json

import pytest
import torch
from einops import rearrange

from scenes.coord_fit import FitConfig, fit_radiance
from scenes.query import point_truth
from scenes.render import render
from scenes.sampler import SamplerConfig, sample_scene
from scenes.cli import main as scenes_main
from visinterp.cli import main
from visinterp.coords.acts import pixel_windows, ray_windows
from visinterp.analysis.alignment import alignment_table
from visinterp.coords.acts import SURFACE_FACTORS
from visinterp.coords.run import FACTOR_NAMES
from visinterp.coords.figures import pixel_maps
from visinterp.coords.view import SceneFeaturesView


@pytest.fixture(scope="module")
def image_fit(tmp_path_factory):
    out = tmp_path_factory.mktemp("fit")
    assert scenes_main(["coord-fit", "--kind", "image", "--size", "16", "--steps", "30", "--hidden", "32",
                        "--scene-seed", "3", "--out", str(out), "--no-progress"]) == 0
    return out


def test_pixel_windows_tile_the_image_in_raster_order(image_fit):
    from scenes.io import load_fit

    _, scene, _, model = load_fit(image_fit)
    w = pixel_windows(model, scene, 16, tile=4)
    assert w.acts.shape == (16, 16, 32) and w.axis == "raster" and w.grid == (4, 4)
    ids = rearrange(w.factors["object_id"], "(a b) (h w) -> (a h) (b w)", a=4, h=4)
    assert torch.equal(ids, render(scene, 16, aa=1).object_id)
    coords = rearrange(w.where, "(a b) (h w) c -> (a h) (b w) c", a=4, h=4)
    assert coords[5, 7].tolist() == [0, 5, 7]


def test_ray_windows_run_near_to_far_with_true_factors():
    scene = sample_scene(1, SamplerConfig(n_objects=(2, 2), ground_plane=0.0))
    cfg = FitConfig(size=8, steps=1, hidden=16, samples=10, progress=False)
    field = fit_radiance(scene, FitConfig(size=8, steps=1, eval_every=1, views=2, heldout_views=1, samples=10,
                                          hidden=16, batch=64, progress=False)).model
    w = ray_windows(field, scene, cfg, views=2, size=8)
    assert w.acts.shape[1:] == (10, 16) and w.axis == "tokens"
    assert (w.factors["depth"][:, 1:] > w.factors["depth"][:, :-1]).all()
    assert w.factors["inside"].any()  # some rays pass through an object
    assert set(w.factors["depth_bin"].unique().tolist()) == {0, 1, 2, 3}
    # surface factors name an object only within SURFACE_BAND of a surface: recompute at the samples
    from scenes.coord_fit import orbit_cameras, scene_bounds
    from scenes.raycast import camera_rays, pixel_grid
    from scenes.volume import ray_sphere, sample_t
    from visinterp.coords.acts import SURFACE_BAND

    cam = orbit_cameras(scene.camera, 2, 0.25)[0]
    o, d = camera_rays(cam, pixel_grid(8, 8, [(0.5, 0.5)])[0], 8, 8)
    near, far = ray_sphere(o, d, scene_bounds(scene))
    keep = far > near
    t = sample_t(near[keep], far[keep], 10)
    pts = o[keep][:, None] + t[..., None] * d[keep][:, None]
    truth = point_truth(scene, pts.reshape(-1, 3))
    expected = torch.where(truth.sdf.abs() > SURFACE_BAND, -1, truth.object_id).reshape(t.shape)
    assert torch.equal(w.factors["object_id"][: t.shape[0]], expected)
    assert (expected == -1).any() and (expected >= 0).any()


def test_pixel_maps_take_the_max_over_positions_of_a_pixel():
    states = torch.tensor([[[1.0, 0.0], [3.0, 2.0]]])  # one window, two positions on the same pixel
    where = torch.tensor([[[0, 1, 0], [0, 1, 0]]])
    maps = pixel_maps(states, where, [0, 1])
    assert maps.shape == (2, 2, 1) and maps[:, 1, 0].tolist() == [3.0, 2.0] and maps[:, 0, 0].tolist() == [0.0, 0.0]


@pytest.fixture(scope="module")
def scene_features(image_fit, tmp_path_factory):
    out = tmp_path_factory.mktemp("sf")
    code = main(["scene-features", "--fit", str(image_fit), "--out", str(out), "--size", "16", "--tile", "4",
                 "--width", "64", "--k", "6", "--k-contextual", "2", "--tokens", "12000", "--no-progress"])
    assert code == 0
    return out


def test_scene_features_cli_reports_all_three_models(scene_features):
    report = json.loads((scene_features / "report.json").read_text())
    models = report["models"]
    assert list(models) == ["topk_k6", "contextual_gated_k2", "contextual_gated_k2_control"]
    assert models["topk_k6"]["state_l0"] == pytest.approx(models["topk_k6"]["l0"])
    assert models["contextual_gated_k2"]["state_l0"] >= models["contextual_gated_k2"]["l0"]
    for m in models.values():
        for values in m["alignment"].values():
            scores = [values["correlation"]] if "correlation" in values else [v["auroc"] for v in values.values()]
            assert all(-1 <= s <= 1 for s in scores)
        assert m["n_unnamed"] <= m["n_live"]
    probe = report["probe"]["factors"]  # the linear ceiling, scored on the same factor values
    for factor, values in probe.items():
        scored = models["topk_k6"]["alignment"][factor]
        if "correlation" in values:
            assert "correlation" in scored and -1 <= values["correlation"] <= 1
        else:
            assert set(values) <= set(scored) and all(0 <= v["auroc"] <= 1 for v in values.values())


def test_saved_saes_and_windows_reproduce_the_reported_alignment(scene_features):
    view = SceneFeaturesView(scene_features)
    assert view.contextual == "contextual_gated_k2"
    for name in view.names:
        state = view.state(name)
        table = alignment_table(state.reshape(-1, state.shape[-1]), {k: v.reshape(-1) for k, v in view.factors.items()},
                                continuous=view.continuous, names=FACTOR_NAMES, within_labelled=SURFACE_FACTORS)
        assert json.loads(json.dumps(table["factors"])) == view.report["models"][name]["alignment"]
    f = view.unnamed("contextual_gated_k2")[0] if view.unnamed("contextual_gated_k2") else 0
    profile = view.factor_profile("contextual_gated_k2", f)
    on = (view.state("contextual_gated_k2")[..., f] > 0).float()
    labels = view.factors["object_id"]
    first = int(labels[labels >= 0].min())
    assert profile["object_id"][str(first)] == pytest.approx(float(on[labels == first].mean()), abs=1e-3)
    assert set(profile["kind_id"]) <= {"sphere", "box", "cylinder", "torus", "plane"}  # values named, not numbered


def test_scene_notebook_runs_on_the_output(scene_features, run_notebook):
    nb = run_notebook("explore_scene_features.ipynb", "SCENE_FEATURES_RUN", scene_features)
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    report = json.loads((scene_features / "report.json").read_text())
    m = report["models"]["contextual_gated_k2"]
    assert f"unnamed {m['n_unnamed']} of {m['n_live']} live" in text and "groups: [" in text
    pictures = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(pictures) == 1


def test_scene_features_bad_input(tmp_path, image_fit, capsys):
    assert main(["scene-features", "--fit", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "not a coord-fit folder" in capsys.readouterr().err
    assert main(["scene-features", "--fit", str(image_fit), "--out", str(tmp_path / "o"), "--size", "16", "--tile", "5"]) == 2
    assert "--tile" in capsys.readouterr().err and not (tmp_path / "o").exists()
