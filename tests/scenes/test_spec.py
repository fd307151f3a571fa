import json

import pytest

from scenes.spec import Background, Camera, Light, Scene, SceneError, SceneObject, Texture


def _scene():
    return Scene(objects=(SceneObject("plane", texture=Texture("checker", 0.5, (0.2, 0.3, 0.4))),
                          SceneObject("torus", (1.0, 0.3, -0.5), (0.5, 0.2, 0.0), (30.0, 10.0, 0.0), (0.9, 0.1, 0.2),
                                      "glossy", Texture("noise", 0.2, seed=7))),
                 lights=(Light(), Light("point", position=(1.0, 3.0, 2.0), intensity=9.0)),
                 camera=Camera((0.0, 2.0, 5.0), (0.0, 0.0, 0.0), 50.0), background=Background("sky"), seed=3)


def test_scene_round_trips_through_json():
    scene = _scene()
    text = scene.to_json()
    again = Scene.from_json(text)
    assert again == scene
    assert json.loads(again.to_json()) == json.loads(text)


@pytest.mark.parametrize("make, words", [
    (lambda: SceneObject("sphere", size=(-1.0, 0.0, 0.0)), "size"),
    (lambda: SceneObject("cone"), "object.kind='cone' is not one of"),
    (lambda: SceneObject("box", material="velvet"), "object.material"),
    (lambda: SceneObject("torus", size=(0.2, 0.3, 0.0)), "minor radius"),
    (lambda: Texture("zigzag"), "texture.kind"),
    (lambda: Light("spot"), "light.kind"),
    (lambda: Camera(fov=0.0), "camera.fov"),
    (lambda: Camera(eye=(0.0, 5.0, 0.0), target=(0.0, 0.0, 0.0)), "straight up or down"),
    (lambda: Scene(objects=tuple(SceneObject("sphere") for _ in range(7))), "1 to 6 objects"),
    (lambda: Scene(objects=(SceneObject("plane"), SceneObject("plane"))), "at most one ground plane"),
    (lambda: Scene.from_dict({"objects": [], "colour": 1}), "unknown scene field"),
    (lambda: Scene.from_dict({"objects": [{"kind": "sphere", "radius": 1}]}), "invalid scene"),
    (lambda: Scene.from_json("{not json"), "does not parse"),
])
def test_invalid_scenes_raise_one_line_naming_the_field(make, words):
    with pytest.raises(SceneError) as info:
        make()
    assert words in str(info.value)
    assert "\n" not in str(info.value)
