import re

import pytest

from scenes.sampler import SamplerConfig, check_in_view, project, sample_scene
from scenes.spec import Camera, Scene, SceneError, SceneObject


def test_same_seed_same_scene_and_seeds_differ():
    a, b = sample_scene(11), sample_scene(11)
    assert a == b and a.seed == 11
    assert sample_scene(12) != a
    assert Scene.from_json(a.to_json()) == a


def test_sampled_scenes_respect_the_config_and_stay_in_view():
    cfg = SamplerConfig(n_objects=(2, 2), ground_plane=0.0, materials={"glossy": 1.0}, kinds={"torus": 1.0},
                        n_lights=(3, 3), point_light=1.0, backgrounds={"sky": 1.0})
    for seed in range(5):
        s = sample_scene(seed, cfg)
        assert [o.kind for o in s.objects] == ["torus", "torus"]
        assert {o.material for o in s.objects} == {"glossy"}
        assert [l.kind for l in s.lights] == ["point"] * 3 and s.background.kind == "sky"
        check_in_view(s)  # raises if not
        # bounding circles in xz never overlap
        (x0, _, z0), (x1, _, z1) = s.objects[0].position, s.objects[1].position
        assert ((x0 - x1) ** 2 + (z0 - z1) ** 2) ** 0.5 > s.objects[0].bounding_radius + s.objects[1].bounding_radius


def test_factor_distributions_follow_the_weights():
    kinds = [o.kind for seed in range(60) for o in sample_scene(seed, SamplerConfig(kinds={"sphere": 3.0, "box": 1.0},
                                                                                      ground_plane=0.0)).objects]
    share = kinds.count("sphere") / len(kinds)
    assert set(kinds) == {"sphere", "box"} and 0.6 < share < 0.9  # 0.75 expected


def test_project_and_out_of_view_error():
    cam = Camera(eye=(0.0, 0.0, 5.0), target=(0.0, 0.0, 0.0), fov=40.0)
    assert project(cam, (0.0, 0.0, 0.0)) == pytest.approx((0.5, 0.5))
    assert project(cam, (0.0, 0.0, 9.0)) is None  # behind the camera
    scene = Scene(objects=(SceneObject("sphere", position=(0.0, 0.0, 9.0)),), camera=cam)
    with pytest.raises(SceneError, match="object 0 .* out of the camera's view"):
        check_in_view(scene)


@pytest.mark.parametrize("kwargs, words", [({"n_objects": (0, 2)}, "n_objects"), ({"n_lights": (1, 4)}, "n_lights"),
                                           ({"kinds": {"pyramid": 1.0}}, "unknown ['pyramid']"),
                                           ({"materials": {"matte": 0.0}}, "at least one > 0")])
def test_bad_sampler_config(kwargs, words):
    with pytest.raises(SceneError, match=re.escape(words)):
        SamplerConfig(**kwargs)
