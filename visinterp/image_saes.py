"""SAEs on an activation store of image windows: the sweep (per-position TopK, contextual, its
shuffled-context control), trained streamed from the store, and their outputs put back on the
image grid for image-space metrics, galleries and steering."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from einops import rearrange
from torch import Tensor

from ctxsae_core import BatchTopK, ContextualConfig, JumpReLU, SAEConfig, TopK, TrainConfig
from ctxsae_core.axes import ContextAxis
from ctxsae_core.checkpoint import build_sae, save_sae
from ctxsae_core.sae import BaseSAE
from ctxsae_core.trainer import Trainer
from visinterp.codes import window_codes
from visinterp.harvest import tile_windows
from visinterp.run_config import SweepConfig
from visinterp.store import ActivationStore


@dataclass(frozen=True)
class SAESpec:
    name: str  # e.g. "topk_k4", "jumprelu_c0.01", "contextual_gated_k2", "contextual_gated_k2_control"
    series: str  # the sweep it belongs to: "topk", "jumprelu", "contextual_gated", "contextual_gated_control"
    family: str  # "per-position", "contextual", "control"
    k: int | None  # the budget; None for JumpReLU, whose L0 is learned
    config: SAEConfig
    shuffle: bool


def sweep_specs(sweep: SweepConfig, d: int) -> list[SAESpec]:
    activations = {"topk": TopK, "batchtopk": BatchTopK}
    specs = [SAESpec(f"{kind}_k{k}", kind, "per-position", k,
                     SAEConfig(d_in=d, width=sweep.width, activation=activations[kind](k=k)), False)
             for kind in sweep.per_position for k in sweep.k]
    specs += [SAESpec(f"jumprelu_c{c:g}", "jumprelu", "per-position", None,
                      SAEConfig(d_in=d, width=sweep.width,
                                activation=JumpReLU(l0_coeff=c, init_threshold=sweep.jumprelu_threshold)), False)
              for c in sweep.jumprelu]
    for carry in sweep.carries:
        for k in sweep.k_contextual:
            cfg = ContextualConfig(d_in=d, width=sweep.width, activation=BatchTopK(k=k), carry=carry)
            specs.append(SAESpec(f"contextual_{carry}_k{k}", f"contextual_{carry}", "contextual", k, cfg, False))
            specs.append(SAESpec(f"contextual_{carry}_k{k}_control", f"contextual_{carry}_control", "control", k, cfg, True))
    return specs


def train_sae(spec: SAESpec, store: ActivationStore, train_idx: Tensor, axis: ContextAxis, sweep: SweepConfig,
              folder: Path, progress: bool) -> BaseSAE:
    """Train streamed from the store (one shard in memory at a time); resumes from folder's checkpoint."""
    torch.manual_seed(sweep.seed)
    model = build_sae(spec.config)
    t = store.window_shape[0]
    tc = TrainConfig(tokens=sweep.tokens, batch_tokens=sweep.batch_windows * t, lr=sweep.lr, seed=sweep.seed,
                     shuffle_context=spec.shuffle, progress=progress, eval_every=0, shrink_encoder_init=True,
                     checkpoint_every=max(50, sweep.tokens // (sweep.batch_windows * t) // 4))
    Trainer(model, tc, axis, out_dir=folder).fit(store.batches(train_idx, sweep.batch_windows, sweep.seed))
    save_sae(model, folder, axis)
    return model.eval()


def untile(windows: Tensor, n: int, h: int, w: int, tile: int) -> Tensor:
    """Inverse of harvest.tile_windows: windows (n * a * b, T, C) -> maps (n, C, h, w)."""
    if not tile or (tile >= h and tile >= w):
        return rearrange(windows, "n (h w) c -> n c h w", h=h, w=w)
    return rearrange(windows, "(n a b) (p q) c -> n c (a p) (b q)", n=n, a=h // tile, p=tile)


def reconstruct_map(model: BaseSAE, maps: Tensor, axis: ContextAxis, tile: int, shuffle: bool, seed: int) -> Tensor:
    """A hook's maps (N, C, H, W) through the SAE and back: what gets spliced into the autoencoder."""
    windows, _ = tile_windows(maps, tile)
    x_hat = window_codes(model, windows, axis, shuffle, seed)["x_hat"]
    return untile(x_hat, maps.shape[0], maps.shape[2], maps.shape[3], tile)


@torch.no_grad()
def decoder_direction(model: BaseSAE, feature: int) -> Tensor:
    """The raw-units change in the reconstruction when feature `feature` is on with value 1 (D,)."""
    codes = torch.zeros(2, model.config.width)
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
        out[f] = ae.splice(images, hook, lambda m, d=d: m + d.to(m.dtype)[None, :, None, None])
    return out
