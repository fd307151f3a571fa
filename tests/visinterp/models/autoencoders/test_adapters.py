"""diffusers autoencoders through the same from_pretrained call users run, on tiny configs
saved to a temporary folder (no SD VAE weights exist offline)."""

import pytest
import torch

from ctxsae_common.errors import InputError
from visinterp.models.autoencoders import LATENT, load_autoencoder


@pytest.fixture(scope="module")
def kl_folder(tmp_path_factory):
    from diffusers import AutoencoderKL

    folder = tmp_path_factory.mktemp("kl")
    torch.manual_seed(0)
    AutoencoderKL(block_out_channels=(8, 8, 16, 16), down_block_types=("DownEncoderBlock2D",) * 4,
                  up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1, latent_channels=4,
                  norm_num_groups=4, scaling_factor=0.18215).save_pretrained(folder)
    return folder


@torch.no_grad()
def test_autoencoder_kl_folder_loads_with_stable_hook_names_and_unscaled_latents(kl_folder):
    from diffusers import AutoencoderKL

    ae = load_autoencoder(str(kl_folder))
    reference = AutoencoderKL.from_pretrained(kl_folder)
    x = torch.rand(2, 3, 32, 32)
    maps = ae.capture(x, ae.hook_names)
    assert ae.hook_names == [LATENT, "encoder.down.0", "encoder.down.1", "encoder.down.2", "encoder.down.3",
                             "encoder.mid", "decoder.mid", "decoder.up.0", "decoder.up.1", "decoder.up.2", "decoder.up.3"]
    assert ae.scaling_factor == 0.18215 and ae.metadata()["scaling_factor"] == 0.18215
    # unscaled: the posterior mean of the [-1, 1] image, not multiplied by the scaling factor
    torch.testing.assert_close(maps[LATENT], reference.encode(x * 2 - 1).latent_dist.mean)
    assert maps["encoder.mid"].shape == (2, 16, 4, 4) and maps["decoder.up.3"].shape == (2, 8, 32, 32)
    out = ae.decode(maps[LATENT])
    torch.testing.assert_close(out, ((reference.decode(maps[LATENT]).sample + 1) / 2).clamp(0, 1))


@torch.no_grad()
def test_splicing_an_identity_changes_nothing_and_zeroing_a_stage_changes_the_image(kl_folder):
    ae = load_autoencoder(str(kl_folder))
    x = torch.rand(1, 3, 32, 32)
    clean = ae.decode(ae.encode(x))
    for hook in (LATENT, "encoder.mid", "decoder.up.1"):
        torch.testing.assert_close(ae.splice(x, hook, lambda m: m), clean)
        assert (ae.splice(x, hook, torch.zeros_like) - clean).abs().max() > 1e-3


@torch.no_grad()
def test_autoencoder_tiny_folder_matches_diffusers_own_forward(tmp_path):
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    AutoencoderTiny(latent_channels=4).save_pretrained(tmp_path)
    ae, reference = load_autoencoder(str(tmp_path)), AutoencoderTiny.from_pretrained(tmp_path)
    x = torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(ae.encode(x), reference.encode(x * 2 - 1).latents)
    assert ae.capture(x, ["encoder.mid", "decoder.up.2"])["decoder.up.2"].shape == (1, 64, 32, 32)


def test_missing_folders_and_unreachable_ids_get_one_line_errors(tmp_path, monkeypatch):
    with pytest.raises(InputError, match="no such folder"):
        load_autoencoder(str(tmp_path / "nope"))
    with pytest.raises(InputError, match="holds neither TAESD-family"):
        load_autoencoder(str(tmp_path))
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # fail at once instead of retrying the network
    with pytest.raises(InputError, match="autoencoder 'someone/no-such-vae' is not in the local Hugging Face cache "
                                         "and HF_HUB_OFFLINE is set") as e:
        load_autoencoder("someone/no-such-vae")
    assert "\n" not in str(e.value)
