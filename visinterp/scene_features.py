"""SAEs on a coordinate MLP's activations, checked against the scene's exact factors.

Trains a per-position TopK SAE, a contextual SAE (gated carry) and its shuffled-context
control on the same windows (`visinterp.coord_acts`), then reports for each: FVU, L0, state
L0, the best single feature per ground-truth factor (AUROC, or correlation for depth), the
within-object switch rate, and the features that match no known factor ("unnamed"), with
pictures of where they fire. The SAEs and the held-out windows are saved beside report.json,
so `visinterp.scene_view.SceneFeaturesView` can explore them in a notebook."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ctxsae_core import BatchTopK, ContextualConfig, SAEConfig, TopK, TrainConfig, make_axis
from ctxsae_core.checkpoint import build_sae, save_sae, save_tensors_atomic, write_json_atomic
from ctxsae_core.data import WindowBatches
from ctxsae_core.evaluate import evaluate
from ctxsae_core.metrics import switch_rate
from ctxsae_core.trainer import Trainer
from scenes.query import NORMAL_BINS
from scenes.spec import KINDS, MATERIALS, TEXTURES
from visinterp.alignment import alignment_table, probe_table, unnamed_features
from visinterp.codes import window_codes
from visinterp.coord_acts import SURFACE_FACTORS, Windows
from visinterp.scene_figures import feature_pictures

PROBE_ROWS = 200_000  # training positions the linear probes read (a random subset beyond that)
FACTOR_NAMES = {"kind_id": KINDS, "material_id": MATERIALS, "texture_id": TEXTURES, "normal_bin": NORMAL_BINS}
HELD_FILE = "held_windows.safetensors"  # the held-out windows: acts, where, factor/<name>; axis in the metadata


def sae_folder(name: str) -> str:
    """Where `analyse` saves the SAE called `name`, relative to its output folder."""
    return "saes/" + name.replace(", shuffled control", "_control").replace(" ", "_")


@dataclass(frozen=True)
class SceneSAEConfig:
    width: int = 512
    k: int = 16  # per-position TopK
    k_contextual: int = 6
    tokens: int = 400_000
    batch_windows: int = 16
    lr: float = 3e-3
    seed: int = 0
    unnamed_threshold: float = 0.75
    progress: bool = True


def _models(d: int, cfg: SceneSAEConfig) -> dict[str, tuple[object, bool]]:
    """name -> (config, shuffle_context)."""
    ctx = ContextualConfig(d_in=d, width=cfg.width, activation=BatchTopK(k=cfg.k_contextual), carry="gated")
    return {"per-position topk": (SAEConfig(d_in=d, width=cfg.width, activation=TopK(k=cfg.k)), False),
            "contextual gated": (ctx, False),
            "contextual gated, shuffled control": (ctx, True)}


def analyse(windows: Windows, cfg: SceneSAEConfig, out: Path) -> dict:
    """Train the three SAEs, score them against the factors, write report.json and figures."""
    torch.manual_seed(cfg.seed)
    n, t, d = windows.acts.shape
    axis = make_axis(windows.axis, t, windows.grid)
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed))
    n_held = max(1, n // 5)
    held, train = idx[:n_held], idx[n_held:]
    report: dict = {"windows": n, "T": t, "d": d, "axis": windows.axis, "grid": windows.grid, "seed": cfg.seed,
                    "models": {}}
    save_tensors_atomic(out / HELD_FILE, {"acts": windows.acts[held], "where": windows.where[held],
                                          **{f"factor/{k}": v[held] for k, v in windows.factors.items()}},
                        {"axis": windows.axis, "grid": json.dumps(windows.grid), "continuous": json.dumps(windows.continuous)})
    report["probe"] = _probe(windows, train, held, cfg.seed)
    for name, (sae_cfg, shuffle) in _models(d, cfg).items():
        model = build_sae(sae_cfg)
        tc = TrainConfig(tokens=cfg.tokens, batch_tokens=cfg.batch_windows * t, lr=cfg.lr, seed=cfg.seed,
                         shuffle_context=shuffle, progress=cfg.progress, eval_every=0)
        Trainer(model, tc, axis).fit(WindowBatches(windows.acts[train], cfg.batch_windows, cfg.seed))
        save_sae(model, out / sae_folder(name), axis)
        x = windows.acts[held]
        scores = evaluate(model, x, axis, shuffle_context=shuffle, seed=cfg.seed)
        states = window_codes(model, x, axis, shuffle, cfg.seed, permutation_key=())["state"]  # as first reported
        flat = states.reshape(-1, states.shape[-1])
        factors = {k: v[held].reshape(-1) for k, v in windows.factors.items()}
        table = alignment_table(flat, factors, continuous=windows.continuous, names=FACTOR_NAMES,
                                within_labelled=SURFACE_FACTORS)
        unnamed = unnamed_features(table["best_by_feature"], flat, cfg.unnamed_threshold)
        rates = switch_rate(states > 0, windows.factors["object_id"][held])
        live = (flat > 0).any(0)
        report["models"][name] = {
            "fvu": scores["fvu"], "l0": scores["l0"], "state_l0": scores["state_l0"],
            "dead_fraction": scores["dead_fraction"], "alignment": table["factors"],
            "mean_best_auroc": _mean_auroc(table["factors"]),
            "within_object_switch_rate": float(rates[live].nanmean()) if live.any() else math.nan,
            "unnamed": unnamed[:20], "n_unnamed": len(unnamed), "n_live": int(live.sum()),
            "folder": sae_folder(name), "shuffle_context": shuffle}
        if unnamed:
            feature_pictures(states, windows.where[held], unnamed[:6], out / f"unnamed_{name.split(',')[0].replace(' ', '_')}"
                             f"{'_control' if shuffle else ''}.png", f"{name}: unnamed features (max over positions)")
    write_json_atomic(out / "report.json", report)
    return report


def _probe(windows: Windows, train: torch.Tensor, held: torch.Tensor, seed: int) -> dict:
    """The linear ceiling: ridge probes on the layer's own activations (train windows), scored
    on the held-out windows like the SAE features (`alignment.probe_table`)."""
    d = windows.acts.shape[-1]
    x = windows.acts[train].reshape(-1, d)
    rows = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:PROBE_ROWS]
    table = probe_table(x[rows], {k: v[train].reshape(-1)[rows] for k, v in windows.factors.items()},
                        windows.acts[held].reshape(-1, d), {k: v[held].reshape(-1) for k, v in windows.factors.items()},
                        continuous=windows.continuous, names=FACTOR_NAMES, within_labelled=SURFACE_FACTORS)
    return {"factors": table, "mean_auroc": _mean_auroc(table)}


def _mean_auroc(factors: dict) -> float:
    """Mean over categorical factor values of the AUROC (the best feature's, or the probe's)."""
    values = [v["auroc"] for f in factors.values() for v in f.values() if isinstance(v, dict) and "auroc" in v]
    return float(sum(values) / len(values)) if values else math.nan
