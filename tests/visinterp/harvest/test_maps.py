from pathlib import Path

import pytest
import torch

from visinterp.models.autoencoders import load_autoencoder
from visinterp.harvest.maps import harvest
from ctxsae_core.store import ActivationStore

TAEF2 = Path(__file__).resolve().parents[3].parent / "shared" / "weights" / "taef2"


@pytest.fixture(scope="module")
def taef2():
    return load_autoencoder(str(TAEF2))


def test_harvest_stores_the_hook_maps_as_row_major_windows(taef2, tmp_path):
    images = torch.rand(5, 3, 32, 32)
    folders = harvest(taef2, lambda a, b: images[a:b], 5, ["latent", "encoder.down.2"], tmp_path, {"images": "rand"},
                      tile=4, batch_images=2, shard_windows=8, progress=False)
    latent = ActivationStore(folders["latent"], verify=True)
    assert latent.window_shape == (16, 32) and latent.grid == (4, 4) and latent.n_windows == 5
    expected = taef2.encode(images).detach().flatten(2).transpose(1, 2)  # (N, h*w, C), row-major
    torch.testing.assert_close(latent.gather(torch.arange(5)), expected, rtol=1e-5, atol=1e-5)
    tiled = ActivationStore(folders["encoder.down.2"])  # an 8x8 map cut into four 4x4 tiles per image
    assert tiled.n_windows == 20 and tiled.image_index().tolist() == [i for i in range(5) for _ in range(4)]
    assert tiled.identity["hook"] == "encoder.down.2" and tiled.identity["autoencoder"].startswith("TAEF2")


def test_an_interrupted_harvest_resumes_to_the_same_stores(taef2, tmp_path):
    images = torch.rand(7, 3, 16, 16)
    args = (["latent", "encoder.mid"], )
    harvest(taef2, lambda a, b: images[a:b], 7, *args, tmp_path / "whole", {}, batch_images=2, shard_windows=3,
            progress=False)

    def dies_at_image_5(a, b):
        if b > 5:
            raise KeyboardInterrupt
        return images[a:b]

    with pytest.raises(KeyboardInterrupt):
        harvest(taef2, dies_at_image_5, 7, *args, tmp_path / "cut", {}, batch_images=2, shard_windows=3, progress=False)
    assert ActivationStore(tmp_path / "cut" / "latent").done_items == 4  # batches 0-1 were flushed as one shard
    harvest(taef2, lambda a, b: images[a:b], 7, *args, tmp_path / "cut", {}, batch_images=2, shard_windows=3,
            progress=False)
    for hook in args[0]:
        whole, cut = ActivationStore(tmp_path / "whole" / hook), ActivationStore(tmp_path / "cut" / hook, verify=True)
        assert cut.n_windows == whole.n_windows == 7
        torch.testing.assert_close(cut.gather(torch.arange(7)), whole.gather(torch.arange(7)))
