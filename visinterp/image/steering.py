"""Steering an image autoencoder with SAE features: a feature's decoder direction added at
every patch of a hook's map, then decoded."""

from __future__ import annotations

import torch
from torch import Tensor

from ctxsae_core.sae import BaseSAE


@torch.no_grad()
def decoder_direction(model: BaseSAE, feature: int) -> Tensor:
    """The raw-units change in the reconstruction when feature `feature` is on with value 1 (D,)."""
    codes = torch.zeros(2, model.config.width, device=model.W_dec_FD.device)
    codes[1, feature] = 1.0
    out = model.decode(codes)
    return out[1] - out[0]


@torch.no_grad()
def steer(ae, model: BaseSAE, hook: str, images: Tensor, state: Tensor, features: list[int], scale: float) -> dict[int, Tensor]:
    """Per feature, `images` decoded with its decoder direction added at every patch of the
    hook's map, scaled to `scale` x the feature's mean active value in `state` (positions, F)."""
    out = {}
    for f in features:
        on = state[:, f][state[:, f] > 0]
        d = decoder_direction(model, f) * (float(on.mean()) if on.numel() else 1.0) * scale
        out[f] = ae.splice(images, hook, lambda m, d=d: m + d.to(m)[None, :, None, None])
    return out
