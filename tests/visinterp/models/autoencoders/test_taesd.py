"""The TAESD family against the real TAEF2 weights in ../shared/weights/taef2."""

from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib import cbook
from PIL import Image

from ctxsae_common.errors import InputError
from visinterp.models.autoencoders import load_autoencoder, psnr_per_image

TAEF2 = Path(__file__).resolve().parents[4].parent / "shared" / "weights" / "taef2"


def _photo(size: int) -> torch.Tensor:
    """Grace Hopper (matplotlib's sample photo), its top 512 x 512 square resized to `size`."""
    im = Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")
    im = im.crop((0, 0, 512, 512)).resize((size, size), Image.LANCZOS)
    return torch.from_numpy(np.asarray(im, dtype=np.float32) / 255).permute(2, 0, 1)[None]


@pytest.fixture(scope="module")
def taef2():
    return load_autoencoder(str(TAEF2))


def test_taef2_loads_with_its_pooling_branch_and_32_latent_channels(taef2):
    assert taef2.latent_channels == 32 and taef2.downsample == 8
    pooled = [m for m in [*taef2.encoder, *taef2.decoder] if getattr(m, "pool", None) is not None]
    assert len(pooled) == 6  # the three 1/8-resolution blocks of the encoder and of the decoder
    assert taef2.description.startswith("TAEF2")


@torch.no_grad()
def test_taef2_round_trips_a_real_photo_like_a_working_autoencoder(taef2):
    # Measured 25.3 dB at 128 px and 30.5 dB at 512 px on this photo; a broken block (e.g. the
    # pooling branch dropped) gives 15.7 dB, so these bounds separate working from broken.
    for size, floor in ((128, 24.0), (512, 29.0)):
        x = _photo(size)
        z = taef2.encode(x)
        assert z.shape == (1, 32, size // 8, size // 8)
        assert float(psnr_per_image(x, taef2.decode(z))) > floor
    for m in [*taef2.encoder, *taef2.decoder]:  # without the pooling branch it stops working
        if getattr(m, "pool", None) is not None:
            m.pool = None
    x = _photo(128)
    assert float(psnr_per_image(x, taef2.decode(taef2.encode(x)))) < 20.0


@torch.no_grad()
def test_hooks_capture_each_stage_at_its_resolution(taef2):
    x = _photo(64)
    maps = taef2.capture(x, taef2.hook_names)
    shapes = {k: tuple(v.shape[1:]) for k, v in maps.items()}
    assert shapes == {"latent": (32, 8, 8), "encoder.down.0": (64, 64, 64), "encoder.down.1": (64, 32, 32),
                      "encoder.down.2": (64, 16, 16), "encoder.mid": (64, 8, 8), "decoder.mid": (64, 8, 8),
                      "decoder.up.0": (64, 16, 16), "decoder.up.1": (64, 32, 32), "decoder.up.2": (64, 64, 64)}
    assert torch.equal(maps["latent"], taef2.encode(x))
    assert torch.equal(maps["encoder.mid"], taef2.encoder[:14](x))


def test_bad_inputs_get_one_line_errors(taef2, tmp_path):
    with pytest.raises(InputError, match="unknown hook 'encoder.down.9'"):
        taef2.capture(_photo(64), ["encoder.down.9"])
    with pytest.raises(InputError, match="multiples of 8"):
        taef2.capture(torch.rand(1, 3, 60, 64), ["latent"])
    with pytest.raises(InputError, match="NaN"):
        taef2.capture(torch.full((1, 3, 64, 64), float("nan")), ["latent"])
    (tmp_path / "x_encoder.pth").write_bytes((TAEF2 / "taef2_encoder.pth").read_bytes()[:1000])
    (tmp_path / "x_decoder.pth").write_bytes(b"")
    with pytest.raises(InputError, match="x_encoder.pth: not a readable PyTorch state dict"):
        load_autoencoder(str(tmp_path))
