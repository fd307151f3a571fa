"""The offline autoencoder's training scenes: rendered once into the cache, scene by scene, so a
training that was stopped renders only what is missing, and read back as the renders themselves."""

from torch.testing import assert_close

from scenes.render import render
from scenes.sampler import sample_scene
from visinterp.inputs.images import to_batch
from visinterp.models.autoencoders.offline import OfflineAEConfig, training_scenes


def test_training_scenes_are_the_renders_and_a_second_call_renders_only_what_is_missing(monkeypatch):
    cfg = OfflineAEConfig(images=3, size=16, crop=8, scene_seed=40)
    images = training_scenes(cfg, progress=False)
    assert images.shape == (3, 3, 16, 16)
    assert_close(images, to_batch([render(sample_scene(s), 16) for s in (40, 41, 42)]))

    rendered = []
    monkeypatch.setattr("visinterp.inputs.images.render", lambda scene, size: rendered.append(size) or render(scene, size))
    assert_close(training_scenes(cfg, progress=False), images)
    assert rendered == []  # every scene was on disk
    # a config that trains differently on more of the same scenes renders only the new one
    more = OfflineAEConfig(images=4, size=16, crop=8, scene_seed=40, steps=7, lr=1e-3)
    assert_close(training_scenes(more, progress=False)[:3], images)
    assert rendered == [16]
