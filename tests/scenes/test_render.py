import math

import pytest
import torch

from scenes.geometry import SceneGeometry
from scenes.query import SOLID_DENSITY, image_colour, point_truth, surface_radiance
from scenes.raycast import pixel_grid, shadow_rays
from scenes.render import factor_table, render
from scenes.spec import Background, Camera, Light, Scene, SceneObject, Texture

CAMERA = Camera(eye=(0.0, 0.0, 5.0), target=(0.0, 0.0, 0.0), fov=40.0)
HEADLIGHT = Light("directional", direction=(0.0, 0.0, -1.0), intensity=1.0)  # shines from the camera


def _sphere_scene(material="matte", albedo=(0.5, 0.5, 0.5), light=HEADLIGHT, **kw):
    return Scene(objects=(SceneObject("sphere", size=(1.0, 0, 0), albedo=albedo, material=material, **kw),),
                 lights=(light,), camera=CAMERA, background=Background("flat", (0.0, 0.0, 0.0)), ambient=0.1)


@pytest.mark.parametrize("material, albedo, light, expected", [
    ("matte", (0.5, 0.5, 0.5), HEADLIGHT, 0.5 * (0.1 + 1.0)),  # ambient + Lambert with n.l = 1
    ("glossy", (0.2, 0.2, 0.2), HEADLIGHT, 0.2 * 1.1 + 0.5),  # + Blinn-Phong: n.h = 1, weight 0.5
    ("matte", (0.5, 0.5, 0.5), Light("point", position=(0.0, 0.0, 3.0), intensity=4.0), 0.55),  # 4 / 2^2
])
def test_centre_pixel_shading_hand_computed(material, albedo, light, expected):
    out = render(_sphere_scene(material, albedo, light), 33, aa=1)  # odd size: the centre ray is the axis
    assert out.rgb[16, 16].tolist() == pytest.approx([expected] * 3, abs=2e-3)
    assert out.depth[16, 16].item() == pytest.approx(4.0, abs=5e-3)
    assert out.normal[16, 16].tolist() == pytest.approx([0.0, 0.0, 1.0], abs=1e-3)
    assert out.lit[16, 16, 0].item()


def test_emissive_ignores_lights():
    out = render(_sphere_scene("emissive", (0.2, 0.4, 0.6), emission=1.5), 33, aa=1)
    assert out.rgb[16, 16].tolist() == pytest.approx([0.3, 0.6, 0.9], abs=1e-5)


def test_background_pixels_carry_background_truth():
    out = render(_sphere_scene(), 33, aa=1)
    assert out.object_id[0, 0] == -1 and out.kind_id[0, 0] == -1 and math.isinf(out.depth[0, 0])
    assert out.rgb[0, 0].tolist() == [0.0, 0.0, 0.0]
    # the sphere's silhouette: radius 1 at distance 5 under a 40 degree fov covers a known area
    tan_half = math.tan(math.radians(20))
    radius_px = 33 / 2 * math.tan(math.asin(1 / 5)) / tan_half
    assert (out.object_id == 0).sum().item() == pytest.approx(math.pi * radius_px**2, rel=0.05)


def test_cast_shadow_under_a_sphere():
    scene = Scene(objects=(SceneObject("plane"), SceneObject("sphere", (0.0, 1.5, 0.0), (0.5, 0, 0))),
                  lights=(Light("directional", direction=(0.0, -1.0, 0.0)),), camera=CAMERA)
    p = torch.tensor([[0.0, 0.0, 0.0], [3.0, 0.0, 0.0]])
    lit = shadow_rays(SceneGeometry(scene), p, torch.tensor([[0.0, 1.0, 0.0]] * 2))
    assert lit[:, 0].tolist() == [False, True]


def test_render_is_deterministic_and_antialiasing_keeps_the_truth():
    scene = Scene(objects=(SceneObject("plane"), SceneObject("box", (0.0, 0.5, 0.0), (0.5, 0.5, 0.5), (0.0, 30.0, 0.0))),
                  camera=Camera((0.0, 2.0, 5.0), (0.0, 0.3, 0.0), 45.0))
    a, b = render(scene, 24, aa=2), render(scene, 24, aa=2)
    assert torch.equal(a.rgb, b.rgb) and torch.equal(a.object_id, b.object_id)
    plain = render(scene, 24, aa=1)
    assert torch.equal(plain.object_id, a.object_id) and torch.equal(plain.depth, a.depth)
    edges = (a.rgb - plain.rgb).abs().sum(-1) > 0.05
    assert 0 < edges.float().mean() < 0.2  # AA changes edges, not flat interiors


def test_factor_table_matches_the_id_map():
    scene = _sphere_scene()
    out = render(scene, 33, aa=1)
    (row,) = factor_table(scene, out)
    assert row["pixel_fraction"] == pytest.approx((out.object_id == 0).float().mean().item())
    assert row["kind"] == "sphere" and row["visible"] and row["lit_fraction"][0] > 0.5


def test_image_colour_at_pixel_centres_is_the_unfiltered_render():
    scene = Scene(objects=(SceneObject("torus", (0.0, 0.0, 0.0), (1.0, 0.3, 0), (60.0, 0.0, 0.0),
                                       texture=Texture("stripes", 0.2)),),
                  lights=(HEADLIGHT, Light("point", position=(2.0, 2.0, 2.0), intensity=5.0)), camera=CAMERA)
    out = render(scene, 20, aa=1)
    xy = pixel_grid(20, 20, [(0.5, 0.5)])[0]
    torch.testing.assert_close(image_colour(scene, xy, 20), out.rgb.reshape(-1, 3), atol=0, rtol=0)


def test_point_truth_inside_outside_and_albedo():
    scene = Scene(objects=(SceneObject("plane"), SceneObject("sphere", (0.0, 1.0, 0.0), (0.5, 0, 0), albedo=(1.0, 0.0, 0.0),
                                                             texture=Texture("stripes", 0.25, (0.0, 1.0, 0.0)))))
    pts = torch.tensor([[0.0, 1.0, 0.0], [0.0, 2.0, 0.0], [3.0, -0.2, 0.0], [0.05, 1.0, 0.0], [0.3, 1.0, 0.0]])
    truth = point_truth(scene, pts)
    assert truth.inside.tolist() == [True, False, True, True, True]
    assert truth.density.tolist() == [SOLID_DENSITY, 0.0, SOLID_DENSITY, SOLID_DENSITY, SOLID_DENSITY]
    assert truth.object_id.tolist() == [1, 1, 0, 1, 1]
    assert truth.sdf[:3].tolist() == pytest.approx([-0.5, 0.5, -0.2], abs=1e-6)
    # stripes along local x with period 0.25, offset a quarter: x=0.05 -> cell 0, x=0.3 -> cell 1
    assert truth.albedo[3:].tolist() == [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]


def test_surface_radiance_agrees_with_the_render():
    scene = _sphere_scene("glossy", (0.3, 0.5, 0.7))
    out = render(scene, 33, aa=1)
    rad = surface_radiance(scene, torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.0, 0.0, -1.0]]))
    torch.testing.assert_close(rad[0], out.rgb[16, 16], atol=2e-3, rtol=0)


def test_point_factors_normal_bins_and_shadow():
    from scenes.query import NORMAL_BINS, point_factors

    scene = Scene(objects=(SceneObject("plane"), SceneObject("box", (0.0, 1.5, 0.0), (0.5, 0.5, 0.5))),
                  lights=(Light("directional", direction=(0.0, -1.0, 0.0)),), camera=CAMERA)
    # above the box top (+y), beside it (+x), on the plane under the box (shadowed) and far from it (lit)
    pts = torch.tensor([[0.0, 2.2, 0.0], [0.8, 1.5, 0.0], [0.0, 0.05, 0.0], [3.0, 0.05, 0.0]])
    f = point_factors(scene, pts)
    assert [NORMAL_BINS[i] for i in f["normal_bin"].tolist()] == ["+y", "+x", "+y", "+y"]
    assert f["object_id"].tolist() == [1, 1, 0, 0]
    assert f["shadowed"].tolist() == [0, 0, 1, 0] and f["inside"].tolist() == [0, 0, 0, 0]


def test_pngs_are_srgb_encoded_for_display_while_the_truth_stays_linear(tmp_path):
    """The renderer's values are linear; a PNG written without the sRGB curve shows far too dark."""
    import numpy as np
    from PIL import Image

    from scenes.io import write_png, write_truth
    from scenes.render import srgb

    linear = np.array([0.0, 0.0031308, 0.2, 0.5, 1.0, 1.5])
    assert np.allclose(srgb(linear), [0.0, 0.04045, 0.48453, 0.73536, 1.0, 1.0], atol=1e-4)
    out = render(_sphere_scene(), 16, aa=1)
    write_png(tmp_path / "im.png", out.rgb.numpy())
    write_truth(tmp_path / "im.npz", out)
    shown = np.asarray(Image.open(tmp_path / "im.png")).astype(float) / 255
    centre = float(out.rgb[8, 8, 0])  # 0.55: ambient + Lambert on albedo 0.5
    assert shown[8, 8, 0] == pytest.approx(float(srgb(np.array(centre))), abs=1 / 255)
    assert shown[8, 8, 0] > centre + 0.2  # visibly brighter than the linear value
    assert np.array_equal(np.load(tmp_path / "im.npz")["rgb"], out.rgb.numpy())


@pytest.mark.gpu
def test_rendering_on_cuda_matches_the_cpu():
    from scenes.sampler import sample_scene

    scene = sample_scene(3)
    cpu, cuda = render(scene, 24, aa=2), render(scene, 24, aa=2, device="cuda")
    assert cuda.rgb.device.type == "cpu"  # the output comes back to the CPU
    assert torch.equal(cpu.object_id, cuda.object_id)
    # float32 shading on two devices' maths libraries: on an H100 one pixel of 1728 differed by
    # 1.4e-4; 1e-3 is a quarter of one 8-bit level, so the written images agree
    torch.testing.assert_close(cpu.rgb, cuda.rgb, rtol=0, atol=1e-3)
