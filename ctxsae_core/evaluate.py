"""Held-out evaluation: stream windows through an SAE and report the shared metrics."""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ctxsae_core.axes import ContextAxis
from ctxsae_common.seeds import seeded_generator
from ctxsae_core.data import shuffle_positions
from ctxsae_core.metrics import ReconstructionSums, SparsitySums
from ctxsae_core.sae import BaseSAE


def state_l0_counting(model: BaseSAE) -> str:
    """How state L0 is counted, for every report (docs/design.md, metrics)."""
    if model.config.arch != "contextual":
        return "exact non-zeros; per-position SAE, state == innovations"
    return (f"exact non-zeros; the model sets carried values below carry_threshold="
            f"{model.config.carry_threshold} to zero (normalised units)")


def iter_window_batches(windows: Tensor, batch_windows: int) -> Iterable[Tensor]:
    """Consecutive batches of `batch_windows` windows (the last may be shorter)."""
    for start in range(0, windows.shape[0], batch_windows):
        yield windows[start : start + batch_windows]


def walked_batches(windows: Tensor | Iterable[Tensor], batch_windows: int, shuffle_context: bool, seed: int,
                   device: torch.device) -> Iterable[Tensor]:
    """The held-out batches as `evaluate` walks them, on `device`: with `shuffle_context`, each
    window's positions permuted from the seed's "shuffle_eval" stream, batch after batch."""
    batches = iter_window_batches(windows, batch_windows) if isinstance(windows, Tensor) else windows
    gen = seeded_generator(seed, "shuffle_eval")
    for x in batches:
        x = x.to(device, non_blocking=True)
        yield shuffle_positions(x, gen)[0] if shuffle_context else x


@torch.no_grad()
def evaluate(
    model: BaseSAE,
    windows: Tensor | Iterable[Tensor],
    axis: ContextAxis | None,
    *,
    batch_windows: int = 64,
    shuffle_context: bool = False,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """FVU, MSE, L0 (innovations), state L0 and dead fraction over held-out windows (N, T, D).

    With `shuffle_context`, positions are permuted within each window first (a fixed
    permutation per seed): the shuffled-context control. Batches run on the model's device."""
    device = next(model.parameters()).device
    return evaluate_walked(model, walked_batches(windows, batch_windows, shuffle_context, seed, device), axis,
                           shuffle_context, progress, windows.shape[0] if isinstance(windows, Tensor) else None)


@torch.no_grad()
def evaluate_walked(model: BaseSAE, batches: Iterable[Tensor], axis: ContextAxis | None, shuffle_context: bool,
                    progress: bool = False, n_total: int | None = None) -> dict[str, Any]:
    """`evaluate` over batches already as it walks them (`walked_batches`: on the model's device,
    shuffled for a control), e.g. batches a caller walks more than once."""
    was_training = model.training
    model.eval()
    recon, sparsity = ReconstructionSums(), SparsitySums(model.config.width)
    bar = tqdm(total=n_total, desc="evaluate", unit="window", disable=not progress, leave=False)
    for x in batches:
        out = model(x, axis)
        recon.add(x, out.x_hat)
        sparsity.add(out.innovations, out.state, x.shape[0] * x.shape[1])
        bar.update(x.shape[0])
    bar.close()
    model.train(was_training)
    return scores(model, axis, recon, sparsity, shuffle_context)


def scores(model: BaseSAE, axis: ContextAxis | None, recon: ReconstructionSums, sparsity: SparsitySums,
           shuffle_context: bool) -> dict[str, Any]:
    """The report `evaluate` returns, from sums accumulated over every held-out batch."""
    return {
        "fvu": recon.fvu,
        "mse": recon.mse,
        "l0": sparsity.l0,
        "state_l0": sparsity.state_l0,
        "dead_fraction": sparsity.dead_fraction,
        "n_positions": sparsity.positions,
        "arch": model.config.arch,
        "axis": axis.kind if axis is not None else None,
        "shuffle_context": shuffle_context,
        "state_l0_counting": state_l0_counting(model),
    }


THRESHOLD_SCALES = (0.95, 1.05)  # the inference threshold 5% lower (more codes) and 5% higher


@torch.no_grad()
def threshold_sensitivity(model: BaseSAE, windows: Tensor, axis: ContextAxis | None, *,
                          scales: tuple[float, ...] = THRESHOLD_SCALES, batch_windows: int = 64,
                          shuffle_context: bool = False, seed: int = 0) -> list[dict[str, float]]:
    """Held-out L0 and FVU of an SAE with an inference threshold (BatchTopK codes every
    pre-activation above it), that threshold scaled by each of `scales`, then restored; [] for
    an SAE without one. The threshold is calibrated on training batches, so the held-out L0 lands
    near the budget, not on it; where FVU rises as the threshold is lowered (more codes), the
    model's figures hang on where that calibration lands: a contextual SAE whose extra
    innovations pile onto carried values no code can lower does this."""
    act = model.activation
    if not act.has_statistics:
        return []
    calibrated, out = float(act.threshold), []
    with act.threshold_restored():
        for scale in scales:
            act.set_threshold_(calibrated * scale)
            s = evaluate(model, windows, axis, batch_windows=batch_windows, shuffle_context=shuffle_context, seed=seed)
            out.append({"scale": scale, "l0": s["l0"], "fvu": s["fvu"]})
    return out


def fragile(sensitivity: list[dict[str, float]], fvu: float) -> bool:
    """Whether more codes made the reconstruction worse: the FVU at a lowered threshold (scale
    below 1, a higher L0) above `fvu`, the model's at its own threshold."""
    return any(p["scale"] < 1 and p["fvu"] > fvu for p in sensitivity)
