"""An SAE's outputs on held-out windows, in window order, for every analysis: the shuffled
control walks each window permuted and its outputs are put back where the positions came from."""

from __future__ import annotations

import torch
from torch import Tensor

from ctxsae_core.axes import ContextAxis
from ctxsae_common.seeds import seeded_generator
from ctxsae_core.data import shuffle_positions
from ctxsae_core.evaluate import scores, threshold_sensitivity
from ctxsae_core.metrics import ReconstructionSums, SparsitySums
from ctxsae_core.sae import BaseSAE


@torch.no_grad()
def window_codes(model: BaseSAE, x: Tensor, axis: ContextAxis, shuffle: bool, seed: int, batch: int = 64,
                 on_batch=None) -> dict[str, Tensor]:
    """{"x_hat": (N, T, D), "innovations": (N, T, F) at the input positions, "state": (N, T, F)}.
    With `shuffle`, positions are permuted from the seed's "shuffle_eval" stream, as
    `ctxsae_core.evaluate` permutes them, so codes and reported metrics agree. `on_batch(x,
    out)` sees each batch as the model saw it (shuffled, for the control), on the model's device;
    the codes come back on the CPU."""
    perm = None
    if shuffle:
        x, perm = shuffle_positions(x, seeded_generator(seed, "shuffle_eval"))
    parts: dict[str, list[Tensor]] = {"x_hat": [], "innovations": [], "state": []}
    device = next(model.parameters()).device
    for i in range(0, x.shape[0], batch):
        xb = x[i : i + batch].to(device)
        out = model(xb, axis)
        if on_batch is not None:
            on_batch(xb, out)
        parts["x_hat"].append(out.x_hat.cpu())
        parts["innovations"].append(out.innovations[:, model.output_steps(out)].cpu())
        parts["state"].append(out.state.cpu())
    codes = {k: torch.cat(v) for k, v in parts.items()}
    if perm is not None:
        codes = {k: torch.empty_like(v).scatter_(1, perm[..., None].expand_as(v), v) for k, v in codes.items()}
    return codes


@torch.no_grad()
def evaluate_with_codes(model: BaseSAE, x: Tensor, axis: ContextAxis, shuffle: bool, seed: int,
                        batch: int = 64) -> tuple[dict, dict[str, Tensor]]:
    """`ctxsae_core.evaluate`'s scores and `window_codes` from one pass over the windows (the
    same permutation for the control, so both describe the same forward)."""
    recon, sparsity = ReconstructionSums(), SparsitySums(model.config.width)

    def tally(xb: Tensor, out) -> None:
        recon.add(xb, out.x_hat)
        sparsity.add(out.innovations, out.state, xb.shape[0] * xb.shape[1])

    codes = window_codes(model, x, axis, shuffle, seed, batch, on_batch=tally)
    return scores(model, axis, recon, sparsity, shuffle), codes


def sensitivity(model: BaseSAE, x: Tensor, axis: ContextAxis, shuffle: bool, seed: int) -> dict:
    """An SAE row's `threshold_sensitivity` (`ctxsae_core.evaluate`): its held-out L0 and FVU with
    the inference threshold 5% lower and 5% higher; {} for an SAE without a threshold."""
    points = threshold_sensitivity(model, x, axis, shuffle_context=shuffle, seed=seed)
    return {"threshold_sensitivity": points} if points else {}
