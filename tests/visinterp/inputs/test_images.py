"""Images for the autoencoder jobs are sRGB-encoded, as image files are: renders (linear RGB)
are encoded on the way in, so a folder of the rendered PNGs gives the same images."""

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from ctxsae_common.errors import InputError
from scenes.render import render
from scenes.sampler import sample_scene
from visinterp.inputs.images import FolderImages, SceneImages, to_batch


def test_scene_images_are_srgb_encoded_renders_and_match_their_pngs(tmp_path):
    scenes = SceneImages(tmp_path / "scenes", n=2, size=16, seed=3)
    scenes.ensure(progress=False)
    images = scenes.load(0, 2)  # (2, 3, 16, 16)
    linear = torch.from_numpy(scenes.truth(1)["rgb"]).permute(2, 0, 1)
    # the sRGB curve by hand: 12.92 x below 0.0031308, else 1.055 x^(1/2.4) - 0.055
    x = linear.clamp(0, 1).double()
    by_hand = torch.where(x <= 0.0031308, 12.92 * x, 1.055 * x.pow(1 / 2.4) - 0.055).float()
    assert_close(images[1], by_hand)
    lit = (linear > 0.05) & (linear < 0.95)
    assert (images[1][lit] > linear[lit]).all()  # encoding brightens every mid-tone
    assert_close(to_batch([render(sample_scene(3), 16)])[0], images[0])
    # the PNGs the run writes are the same images, to 8 bits
    folder = FolderImages(tmp_path / "scenes", n=2, size=16)
    assert folder.names == ["00000.png", "00001.png"]
    assert (folder.load(0, 2) - images).abs().max() <= 0.5 / 255 + 1e-6


def test_a_folder_without_images_is_a_one_line_error(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(InputError, match="no images"):
        FolderImages(tmp_path, n=4, size=16)


def test_encoding_a_linear_mid_grey():
    from visinterp.inputs.images import encoded

    grey = np.full((2, 2, 3), 0.2, dtype=np.float32)
    assert encoded(grey)[:, 0, 0].tolist() == pytest.approx([0.4845] * 3, abs=1e-4)  # 1.055 * 0.2^(1/2.4) - 0.055


def test_image_folders_read_as_a_user_expects(tmp_path):
    """16-bit PNGs keep their values, transparency is composited on white, subfolders and .tif
    are read, hidden files skipped, only the n files used are decoded, and fewer files than n
    is a warning."""
    from PIL import Image

    from visinterp.inputs.images import BACKGROUND, read_image

    (tmp_path / "sub").mkdir()
    grey16 = np.full((8, 8), 0.25 * 65535, dtype=np.uint16)
    Image.fromarray(grey16).save(tmp_path / "a16.png")
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 128  # red at half opacity
    Image.fromarray(rgba, "RGBA").save(tmp_path / "b_alpha.png")
    Image.fromarray(np.full((8, 8, 3), 60, np.uint8)).save(tmp_path / "sub" / "c.tif")
    (tmp_path / ".hidden.png").write_bytes(b"not an image")
    assert read_image(tmp_path / "a16.png", 8).mean().item() == pytest.approx(0.25, abs=1e-3)  # not near-white
    blended = read_image(tmp_path / "b_alpha.png", 8)[:, 4, 4]
    a = 128 / 255
    assert blended.tolist() == pytest.approx([1.0 * a + BACKGROUND[0] * (1 - a), BACKGROUND[1] * (1 - a),
                                              BACKGROUND[2] * (1 - a)], abs=2e-3)
    with pytest.warns(UserWarning, match="3 image file\\(s\\), fewer than the 20 asked for"):
        folder = FolderImages(tmp_path, n=20, size=8)
    assert folder.names == ["a16.png", "b_alpha.png", "sub/c.tif"] and folder.n == 3
    assert folder.load(2, 3)[0].mean().item() == pytest.approx(60 / 255, abs=1e-3)


def test_oversized_and_broken_images_are_one_line_errors(tmp_path):
    from PIL import Image

    from visinterp.inputs import images

    Image.new("RGB", (40, 30)).save(tmp_path / "big.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    old = images.MAX_PIXELS
    images.MAX_PIXELS = 1000
    try:
        with pytest.raises(InputError, match="40 x 30 pixels is over the limit of 1,000: downscale it first"):
            images.FolderImages(tmp_path, n=1, size=8)
    finally:
        images.MAX_PIXELS = old
    with pytest.raises(InputError, match="broken.png: not a readable image"):
        images.FolderImages(tmp_path, n=2, size=8)
