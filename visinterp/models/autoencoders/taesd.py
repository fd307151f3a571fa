"""The tiny-autoencoder family (TAESD, TAESDXL, TAEF1, TAEF2) from its original `.pth` state dicts.

Architecture after madebyollin/taesd (MIT): 3x3 conv residual blocks, three stride-2 convs down
(8x), nearest upsampling back. TAEF2 adds to the blocks at 1/8 resolution a pooling branch
(1x1 conv to 4x channels, GroupNorm(4), ReLU, 1x1 conv back) that diffusers' AutoencoderTiny
lacks, which is why the family is built here. Images are in [0, 1]; latents are the raw encoder
output (no scaling: the TAESD family is trained to emit latents in its parent VAE's scaled space)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from ctxsae_common.errors import InputError

LATENT_MAGNITUDE = 3.0  # decoder input is soft-clamped to +-3 (tanh(x / 3) * 3), as in taesd.py
_POOL_KEY = "pool.0.weight"


def _conv(n_in: int, n_out: int, **kwargs) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kwargs)


class Clamp(nn.Module):
    """tanh(x / m) * m with m = LATENT_MAGNITUDE: TAESD's soft clamp of the latent."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(x / LATENT_MAGNITUDE) * LATENT_MAGNITUDE


class Block(nn.Module):
    """relu(conv3(relu(conv2(relu(conv1(x'))))) + x'), x' = x + pool(x) when the block pools."""

    def __init__(self, channels: int = 64, pool: bool = False):
        super().__init__()
        self.conv = nn.Sequential(_conv(channels, channels), nn.ReLU(), _conv(channels, channels), nn.ReLU(),
                                  _conv(channels, channels))
        self.pool = nn.Sequential(
            nn.Conv2d(channels, 4 * channels, 1, bias=False), nn.GroupNorm(4, 4 * channels), nn.ReLU(),
            nn.Conv2d(4 * channels, channels, 1, bias=False)) if pool else None
        self.fuse = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return self.fuse(self.conv(x) + x)


def _blocks(n: int, pool: bool) -> list[nn.Module]:
    return [Block(pool=pool) for _ in range(n)]


def tiny_encoder(latent_channels: int, pool: bool) -> nn.Sequential:
    """Indices match the original state dicts: 0 conv, 1 block, then (stride-2 conv, 3 blocks) x3, conv."""
    return nn.Sequential(
        _conv(3, 64), *_blocks(1, False),
        _conv(64, 64, stride=2, bias=False), *_blocks(3, False),
        _conv(64, 64, stride=2, bias=False), *_blocks(3, False),
        _conv(64, 64, stride=2, bias=False), *_blocks(3, pool),
        _conv(64, latent_channels))


def tiny_decoder(latent_channels: int, pool: bool) -> nn.Sequential:
    """The decoder of the tiny family for `latent_channels`, with the pooling branch when `pool`."""
    return nn.Sequential(
        Clamp(), _conv(latent_channels, 64), nn.ReLU(), *_blocks(3, pool),
        nn.Upsample(scale_factor=2), _conv(64, 64, bias=False), *_blocks(3, False),
        nn.Upsample(scale_factor=2), _conv(64, 64, bias=False), *_blocks(3, False),
        nn.Upsample(scale_factor=2), _conv(64, 64, bias=False), *_blocks(1, False),
        _conv(64, 3))


# Stable hook names -> index into the Sequential; the output of that module is the hook's map.
ENCODER_HOOKS = {"encoder.down.0": 1, "encoder.down.1": 5, "encoder.down.2": 9, "encoder.mid": 13}
DECODER_HOOKS = {"decoder.mid": 5, "decoder.up.0": 10, "decoder.up.1": 15, "decoder.up.2": 18}


def _read_state_dict(path: Path, what: str) -> dict[str, Tensor]:
    if not path.is_file():
        raise InputError(f"{path}: no such {what} weights file: pass the folder holding the tiny "
                         f"autoencoder's *_encoder.pth and *_decoder.pth")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError, pickle errors, EOFError... for a bad file
        raise InputError(f"{path}: not a readable PyTorch state dict ({str(e).splitlines()[0][:120]}); "
                         "it may be truncated: download it again") from None
    if not isinstance(state, dict) or "1.weight" not in state and "0.weight" not in state:
        raise InputError(f"{path}: not a tiny-autoencoder {what} state dict (no '0.weight' / '1.weight')")
    return state


def load_tiny_part(path: Path, part: str) -> nn.Sequential:
    """Build the encoder or decoder whose shape the state dict implies, and load it strictly."""
    state = _read_state_dict(path, part)
    pool = any(k.endswith(_POOL_KEY) for k in state)
    if part == "encoder":
        module = tiny_encoder(state["14.weight"].shape[0] if "14.weight" in state else 4, pool)
    else:
        module = tiny_decoder(state["1.weight"].shape[1] if "1.weight" in state else 4, pool)
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise InputError(f"{path}: does not match the tiny-autoencoder {part} "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]}): is it a TAESD-family .pth?")
    return module.eval()


def find_tiny_weights(folder: Path) -> tuple[Path, Path]:
    """The (encoder, decoder) .pth pair in `folder`, e.g. taef2_encoder.pth / taef2_decoder.pth."""
    enc, dec = sorted(folder.glob("*encoder.pth")), sorted(folder.glob("*decoder.pth"))
    if len(enc) != 1 or len(dec) != 1:
        raise InputError(f"{folder}: expected one *_encoder.pth and one *_decoder.pth, found "
                         f"{len(enc)} and {len(dec)}: pass the folder of a TAESD-family autoencoder")
    return enc[0], dec[0]
