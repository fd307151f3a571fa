"""Adapters for concrete autoencoders: the TAESD family from .pth files, and diffusers'
AutoencoderKL (the SD VAE) and AutoencoderTiny from a hub id or a local folder."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor, nn

from ctxsae_common.errors import InputError
from ctxsae_common.hub import check_available, is_hub_id
from visinterp.models.autoencoders.base import ImageAutoencoder, tiny_hook_modules
from visinterp.models.autoencoders.taesd import find_tiny_weights, load_tiny_part

DEFAULT_SD_VAE = "stabilityai/sd-vae-ft-mse"
# Tiny-family names by latent channels (TAESD and TAESDXL both have 4; the file name tells them apart).
_TINY_NAMES = {4: "TAESD", 16: "TAEF1", 32: "TAEF2"}


class TinyAutoencoder(ImageAutoencoder):
    """A TAESD-family autoencoder built from its original encoder/decoder state dicts."""

    family = "taesd"

    def __init__(self, encoder: nn.Sequential, decoder: nn.Sequential, name: str):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder
        self.latent_channels = encoder[-1].out_channels
        self.description = name

    @classmethod
    def from_folder(cls, folder: str | Path) -> "TinyAutoencoder":
        """The encoder and decoder .pth files of a TAESD-family folder."""
        enc_path, dec_path = find_tiny_weights(Path(folder))
        encoder, decoder = load_tiny_part(enc_path, "encoder"), load_tiny_part(dec_path, "decoder")
        channels = encoder[-1].out_channels
        name = enc_path.name.split("_encoder")[0].upper() or _TINY_NAMES.get(channels, "tiny autoencoder")
        return cls(encoder, decoder, f"{name} ({channels} latent channels, {enc_path.parent})")

    def encode(self, images: Tensor) -> Tensor:
        return self.encoder(images)

    def decode(self, latents: Tensor) -> Tensor:
        return self.decoder(latents).clamp(0, 1)

    def hook_modules(self) -> dict[str, nn.Module]:
        return tiny_hook_modules(self.encoder, self.decoder)


class DiffusersKL(ImageAutoencoder):
    """diffusers AutoencoderKL (the Stable Diffusion VAE). Latents are the posterior mean,
    unscaled; `scaling_factor` (0.18215 for SD 1.x, Rombach et al. 2022 sec. 4.3.2) is metadata."""

    family = "autoencoder_kl"

    def __init__(self, vae: nn.Module, description: str):
        super().__init__()
        self.vae = vae.eval()
        self.latent_channels = int(vae.config.latent_channels)
        self.downsample = 2 ** (len(vae.config.block_out_channels) - 1)
        self.scaling_factor = float(vae.config.scaling_factor)
        self.description = description

    def encode(self, images: Tensor) -> Tensor:
        return self.vae.encode(images * 2 - 1).latent_dist.mean

    def decode(self, latents: Tensor) -> Tensor:
        return ((self.vae.decode(latents).sample + 1) / 2).clamp(0, 1)

    def hook_modules(self) -> dict[str, nn.Module]:
        enc, dec = self.vae.encoder, self.vae.decoder
        names = {f"encoder.down.{i}": b for i, b in enumerate(enc.down_blocks)}
        names["encoder.mid"] = enc.mid_block
        names["decoder.mid"] = dec.mid_block
        names.update({f"decoder.up.{i}": b for i, b in enumerate(dec.up_blocks)})
        return names


class DiffusersTiny(ImageAutoencoder):
    """diffusers AutoencoderTiny (TAESD converted to a diffusers folder); no pooling branch, so
    TAEF2 needs `TinyAutoencoder` instead."""

    family = "autoencoder_tiny"

    def __init__(self, vae: nn.Module, description: str):
        super().__init__()
        self.vae = vae.eval()
        self.latent_channels = int(vae.config.latent_channels)
        self.scaling_factor = float(vae.config.scaling_factor)
        self.description = description

    def encode(self, images: Tensor) -> Tensor:
        return self.vae.encoder(images * 2 - 1)

    def decode(self, latents: Tensor) -> Tensor:
        return ((self.vae.decoder(latents) + 1) / 2).clamp(0, 1)

    def hook_modules(self) -> dict[str, nn.Module]:
        return tiny_hook_modules(self.vae.encoder.layers, self.vae.decoder.layers)


def _diffusers_class(folder: Path) -> str:
    try:
        return json.loads((folder / "config.json").read_text()).get("_class_name", "AutoencoderKL")
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"{folder / 'config.json'}: not a readable diffusers config ({e}): "
                         "save the model again with save_pretrained") from None


def from_diffusers(source: str) -> ImageAutoencoder:
    """A diffusers autoencoder from a local folder (AutoencoderKL or AutoencoderTiny, read from
    its config.json) or a hub id (AutoencoderKL)."""
    from diffusers import AutoencoderKL, AutoencoderTiny

    folder = Path(source)
    local = folder.is_dir()
    kind = _diffusers_class(folder) if local else "AutoencoderKL"
    classes = {"AutoencoderKL": (AutoencoderKL, DiffusersKL), "AutoencoderTiny": (AutoencoderTiny, DiffusersTiny)}
    if kind not in classes:
        raise InputError(f"{folder}: a diffusers {kind}, not an image autoencoder this tool reads: "
                         "pass an AutoencoderKL or AutoencoderTiny folder")
    loader, adapter = classes[kind]
    if not local and is_hub_id(source):
        check_available(source, "autoencoder")  # one quick request, not a minute of retries
    try:
        vae = loader.from_pretrained(source, local_files_only=local, low_cpu_mem_usage=False)
    except OSError as e:
        where = "the folder lacks its weights or config" if local else "the hub cannot be reached or the id is wrong"
        raise InputError(f"cannot load autoencoder {source!r} ({where}: {str(e).splitlines()[0][:100]}): pass a "
                         "local folder saved with save_pretrained, a TAESD-family folder, or 'offline' "
                         "for the offline default") from None
    return adapter(vae.float(), f"{kind} {source}")


def load_autoencoder(source: str) -> ImageAutoencoder:
    """A folder of TAESD-family .pth files, a diffusers folder, or a hub id. (The offline default
    is built by `visinterp.models.autoencoders.offline`, which needs a training config.)"""
    folder = Path(source)
    if folder.is_dir() and any(folder.glob("*encoder.pth")):
        return TinyAutoencoder.from_folder(folder)
    if folder.is_dir() and not (folder / "config.json").is_file():
        raise InputError(f"{folder}: holds neither TAESD-family *_encoder.pth/*_decoder.pth files nor a "
                         "diffusers config.json: pass a saved autoencoder folder")
    if not folder.exists() and (source.startswith((".", "/", "~")) or source.count("/") > 1):
        raise InputError(f"{source}: no such folder: pass an existing folder, a hub id such as "
                         f"{DEFAULT_SD_VAE}, or 'offline'")
    return from_diffusers(source)


def psnr_per_image(a: Tensor, b: Tensor) -> Tensor:
    """Per-image PSNR in dB of images in [0, 1]: 10 log10(1 / MSE)."""
    mse = (a - b).pow(2).flatten(1).mean(1).clamp_min(1e-12)
    return -10 * torch.log10(mse)
