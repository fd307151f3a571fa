import math

import pytest
import torch

from scenes.geometry import SceneGeometry, rotation_matrix, sdf_local, texture_mix
from scenes.spec import Scene, SceneObject, Texture


@pytest.mark.parametrize("kind, size, point, expected", [
    ("sphere", (1.0, 0, 0), (2.0, 0.0, 0.0), 1.0),
    ("sphere", (1.0, 0, 0), (0.0, 0.0, 0.0), -1.0),
    ("box", (1.0, 1.0, 1.0), (2.0, 0.0, 0.0), 1.0),
    ("box", (1.0, 1.0, 1.0), (2.0, 2.0, 2.0), math.sqrt(3)),
    ("box", (1.0, 2.0, 3.0), (0.0, 0.0, 0.0), -1.0),
    ("cylinder", (0.5, 1.0, 0), (0.0, 3.0, 0.0), 2.0),
    ("cylinder", (0.5, 1.0, 0), (1.5, 2.0, 0.0), math.sqrt(2)),
    ("torus", (1.0, 0.25, 0), (1.0, 0.0, 0.0), -0.25),
    ("torus", (1.0, 0.25, 0), (0.0, 0.0, 0.0), 0.75),
    ("plane", (0, 0, 0), (3.0, -0.5, 2.0), -0.5),
])
def test_sdf_hand_computed(kind, size, point, expected):
    assert sdf_local(kind, torch.tensor([point]), size).item() == pytest.approx(expected, abs=1e-6)


def test_rotation_is_applied_in_the_local_frame():
    # a box long in x, turned 90 degrees about y, is long in z: (0, 0, 1.5) lies 0.5 outside its end
    scene = Scene(objects=(SceneObject("box", size=(1.0, 0.5, 0.2), rotation=(0.0, 90.0, 0.0)),))
    dist, oid = SceneGeometry(scene).sdf(torch.tensor([[0.0, 0.0, 1.5], [1.5, 0.0, 0.0]]))
    assert dist.tolist() == pytest.approx([0.5, 1.3], abs=1e-5)
    r = rotation_matrix((10.0, 20.0, 30.0))
    torch.testing.assert_close(r @ r.T, torch.eye(3), atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind, size", [("sphere", (0.7, 0, 0)), ("box", (0.3, 0.6, 0.9)),
                                        ("cylinder", (0.4, 0.8, 0)), ("torus", (0.8, 0.3, 0))])
def test_sdfs_are_one_lipschitz_so_sphere_tracing_never_overshoots(kind, size):
    a, b = torch.randn(2000, 3) * 1.5, torch.randn(2000, 3) * 1.5
    da, db = sdf_local(kind, a, size), sdf_local(kind, b, size)
    assert ((da - db).abs() <= (a - b).norm(dim=-1) + 1e-5).all()


def test_sphere_normals_point_outward_from_the_centre():
    scene = Scene(objects=(SceneObject("sphere", position=(1.0, 2.0, 3.0), size=(0.5, 0, 0)),))
    dirs = torch.nn.functional.normalize(torch.randn(100, 3), dim=-1)
    points = torch.tensor([1.0, 2.0, 3.0]) + 0.5 * dirs
    n = SceneGeometry(scene).normals(points, torch.zeros(100, dtype=torch.long))
    torch.testing.assert_close(n, dirs, atol=1e-3, rtol=0)


def test_checker_alternates_between_neighbouring_cells_and_mixes_colour2():
    obj = SceneObject("box", size=(2.0, 2.0, 2.0), albedo=(1.0, 0.0, 0.0), texture=Texture("checker", 0.5, (0.0, 0.0, 1.0)))
    p = torch.tensor([[0.1, 0.1, 0.1], [0.6, 0.1, 0.1], [0.6, 0.6, 0.1]])
    assert texture_mix(obj, p).tolist() == [0.0, 1.0, 0.0]
    albedo = SceneGeometry(Scene(objects=(obj,))).albedo(p, torch.zeros(3, dtype=torch.long))
    assert albedo.tolist() == [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]


def test_noise_texture_is_deterministic_and_in_range():
    obj = SceneObject("sphere", texture=Texture("noise", 0.3, seed=5))
    p = torch.rand(500, 3) * 4 - 2
    m = texture_mix(obj, p)
    assert torch.equal(m, texture_mix(obj, p))
    assert 0 <= m.min() and m.max() <= 1 and m.std() > 0.05
