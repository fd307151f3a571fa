"""The interface every image autoencoder adapter meets: images in [0, 1] -> unscaled latents ->
images, and named hook points whose feature maps can be captured in one pass."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ctxsae_common.errors import InputError

LATENT = "latent"


def block_group_ends(layers: nn.Sequential) -> list[int]:
    """Index of the last residual block in each run of consecutive blocks of a TAESD-style
    Sequential (a block is any module with `conv` and `fuse` children: ours or diffusers')."""
    ends, prev = [], False
    for i, m in enumerate(layers):
        is_block = hasattr(m, "conv") and hasattr(m, "fuse")
        if prev and not is_block:
            ends.append(i - 1)
        prev = is_block
    if prev:
        ends.append(len(layers) - 1)
    return ends


def tiny_hook_modules(encoder: nn.Sequential, decoder: nn.Sequential) -> dict[str, nn.Module]:
    """Encoder groups at 1, 1/2, 1/4 resolution are down.0-2 and the 1/8 group is mid; the
    decoder's 1/8 group is mid and the groups after each upsampling are up.0-2."""
    enc, dec = block_group_ends(encoder), block_group_ends(decoder)
    names = {f"encoder.down.{i}": encoder[j] for i, j in enumerate(enc[:-1])}
    names["encoder.mid"] = encoder[enc[-1]]
    names["decoder.mid"] = decoder[dec[0]]
    names.update({f"decoder.up.{i}": decoder[j] for i, j in enumerate(dec[1:])})
    return names


class ImageAutoencoder(nn.Module):
    """An image autoencoder seen by the workbench. Subclasses set `description`, `family`,
    `latent_channels`, `scaling_factor` and implement `encode`, `decode`, `hook_modules`."""

    description: str = ""
    family: str = ""
    latent_channels: int = 0
    downsample: int = 8
    scaling_factor: float = 1.0  # latents are stored unscaled; multiply by this for a diffusion model

    def encode(self, images: Tensor) -> Tensor:  # (N, 3, H, W) in [0, 1] -> (N, C, H/8, W/8)
        """Images (N, 3, H, W) in [0, 1] -> unscaled latents (N, C, H/8, W/8)."""
        raise NotImplementedError

    def decode(self, latents: Tensor) -> Tensor:  # (N, C, h, w) -> (N, 3, 8h, 8w) in [0, 1]
        """Latents (N, C, h, w) -> images (N, 3, 8h, 8w) in [0, 1]."""
        raise NotImplementedError

    def hook_modules(self) -> dict[str, nn.Module]:
        """Hook name -> the module whose output is that hook's map."""
        raise NotImplementedError

    @property
    def hook_names(self) -> list[str]:
        """Every hook this autoencoder offers: 'latent' and its modules' hooks."""
        return [LATENT, *self.hook_modules()]

    def check_images(self, images: Tensor) -> None:
        """Raise InputError unless images are finite (N, 3, H, W) with sides a multiple of the downsampling."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise InputError(f"images must be (N, 3, H, W), got {list(images.shape)}")
        if images.shape[-1] % self.downsample or images.shape[-2] % self.downsample:
            raise InputError(f"image sides {images.shape[-2]}x{images.shape[-1]} must be multiples of "
                             f"{self.downsample}: resize or crop the images")
        if not torch.isfinite(images).all():
            raise InputError("images hold NaN or Inf: check how they were loaded")

    @property
    def device(self) -> torch.device:
        """Where the model's weights are; `capture`, `splice` and `reconstruct` run there."""
        return next(self.parameters()).device

    @torch.no_grad()
    def reconstruct(self, images: Tensor) -> Tensor:
        """decode(encode(images)) on the model's device, returned on the CPU."""
        return self.decode(self.encode(images.to(self.device))).cpu()

    @torch.no_grad()
    def capture(self, images: Tensor, hooks: list[str]) -> dict[str, Tensor]:
        """Feature maps (N, C, h, w) at each named hook, from one encode (and one decode of the
        latents when a decoder hook is asked for), computed on the model's device and returned
        on the CPU as float32."""
        modules = self.hook_modules()
        unknown = [h for h in hooks if h != LATENT and h not in modules]
        if unknown:
            raise InputError(f"unknown hook {unknown[0]!r} for {self.description}: choose from "
                             f"{', '.join(self.hook_names)}")
        self.check_images(images)
        maps: dict[str, Tensor] = {}
        handles = [modules[h].register_forward_hook(lambda _m, _i, out, h=h: maps.__setitem__(h, out))
                   for h in hooks if h != LATENT]
        try:
            latents = self.encode(images.to(self.device))
            if any(h.startswith("decoder.") for h in hooks):
                self.decode(latents)
        finally:
            for handle in handles:
                handle.remove()
        if LATENT in hooks:
            maps[LATENT] = latents
        return {h: maps[h].float().cpu() for h in hooks}

    @torch.no_grad()
    def splice(self, images: Tensor, hook: str, replace) -> Tensor:
        """Images decoded with the map at `hook` replaced by `replace(map)` on the way: the
        latent (decode(replace(encode(x)))) or any encoder/decoder stage (a forward hook that
        returns the replacement, so the rest of the network runs on it). `replace` sees the map
        on the model's device and returns it there; the images come back on the CPU."""
        images = images.to(self.device)
        if hook == LATENT:
            return self.decode(replace(self.encode(images))).cpu()
        module = self.hook_modules().get(hook)
        if module is None:
            raise InputError(f"unknown hook {hook!r} for {self.description}: choose from {', '.join(self.hook_names)}")
        handle = module.register_forward_hook(lambda _m, _i, out: replace(out))
        try:
            return self.decode(self.encode(images)).cpu()
        finally:
            handle.remove()

    def metadata(self) -> dict[str, Any]:
        """What a report and a store's identity record of the autoencoder."""
        return {"autoencoder": self.description, "family": self.family, "latent_channels": self.latent_channels,
                "downsample": self.downsample, "scaling_factor": self.scaling_factor}
