"""SAEs on a coordinate MLP's activations, checked against the scene's exact factors.

Trains a per-position TopK SAE, a contextual SAE (gated carry) and its shuffled-context
control on the same windows (`visinterp.coords.acts`), then reports for each: FVU, L0, state
L0, the best single feature per ground-truth factor (AUROC, or correlation for depth), the
within-object switch rate, and the features that match no known factor ("unnamed"), with
pictures of where they fire. The SAEs and the held-out windows are saved beside report.json,
so `visinterp.coords.view.SceneFeaturesView` can explore them in a notebook."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from ctxsae_common.files import save_tensors_atomic, write_json_atomic
from ctxsae_common.seeds import seeded_generator
from ctxsae_core.axes import make_axis
from ctxsae_core.data import WindowBatches, split_indices
from ctxsae_core.metrics import switch_rate
from ctxsae_core.sweep import sweep_specs, train_config, train_sae
from scenes.query import NORMAL_BINS
from scenes.spec import KINDS, MATERIALS, TEXTURES
from visinterp.analysis.alignment import alignment_table, probe_table, unnamed_features
from visinterp.analysis.codes import evaluate_with_codes
from visinterp.coords.acts import SURFACE_FACTORS, Windows
from visinterp.coords.config import CoordsConfig
from visinterp.coords.figures import feature_pictures
from visinterp.report.run_json import write_run

PROBE_ROWS = 200_000  # training positions the linear probes read (a random subset beyond that)
FACTOR_NAMES = {"kind_id": KINDS, "material_id": MATERIALS, "texture_id": TEXTURES, "normal_bin": NORMAL_BINS}
HELD_FILE = "held_windows.safetensors"  # the held-out windows: acts, where, factor/<name>; axis in the metadata


def analyse(windows: Windows, cfg: CoordsConfig, out: Path, progress: bool = True,
            device: str | torch.device = "cpu") -> dict:
    """Train the three SAEs on `device`, score them against the factors, write report.json,
    run.json and figures."""
    out = Path(out)
    n, t, d = windows.acts.shape
    axis = make_axis(windows.axis, t, windows.grid)
    train, held = split_indices(n, cfg.held_out, cfg.seed)
    report: dict = {"windows": n, "T": t, "d": d, "axis": windows.axis, "grid": windows.grid, "seed": cfg.seed,
                    "models": {}}
    save_tensors_atomic(out / HELD_FILE, {"acts": windows.acts[held], "where": windows.where[held],
                                          **{f"factor/{k}": v[held] for k, v in windows.factors.items()}},
                        {"axis": windows.axis, "grid": json.dumps(windows.grid), "continuous": json.dumps(windows.continuous)})
    report["probe"] = _probe(windows, train, held, cfg.seed)
    sweep, x = cfg.sweep(), windows.acts[held]
    factors = {k: v[held].reshape(-1) for k, v in windows.factors.items()}
    saes = {}
    for spec in sweep_specs(sweep, d):
        folder = f"saes/{spec.name}"
        trained = train_sae(spec.config, train_config(sweep, spec, progress),
                            WindowBatches(windows.acts[train], sweep.batch_windows, sweep.seed), axis, out / folder, x,
                            device=device, final_eval=False)
        model = trained.model
        scores, codes = evaluate_with_codes(model, x, axis, spec.shuffle, sweep.seed)
        states = codes["state"]
        flat = states.reshape(-1, states.shape[-1])
        table = alignment_table(flat, factors, continuous=windows.continuous, names=FACTOR_NAMES,
                                within_labelled=SURFACE_FACTORS)
        unnamed = unnamed_features(table["best_by_feature"], flat, cfg.unnamed_threshold)
        rates = switch_rate(states > 0, windows.factors["object_id"][held])
        live = (flat > 0).any(0)
        report["models"][spec.name] = {
            **spec.describe(), "fvu": scores["fvu"], "l0": scores["l0"], "state_l0": scores["state_l0"],
            "dead_fraction": scores["dead_fraction"], "alignment": table["factors"],
            "mean_best_auroc": _mean_auroc(table["factors"]),
            "within_object_switch_rate": float(rates[live].nanmean()) if live.any() else math.nan,
            "unnamed": unnamed[:20], "n_unnamed": len(unnamed), "n_live": int(live.sum()),
            "folder": folder, "shuffle_context": spec.shuffle, **trained.trainer.summary(scores)}
        saes[spec.name] = {"folder": folder, "shuffle": spec.shuffle}
        if unnamed:
            feature_pictures(states, windows.where[held], unnamed[:6], out / f"unnamed_{spec.name}.png",
                             f"{spec.name}: unnamed features (max over positions)")
    contextual = next(name for name, m in report["models"].items() if m["family"] == "contextual")
    write_run(out, "coords", held_file=HELD_FILE, axis=axis.to_dict(), seed=cfg.seed, saes=saes, analysed=contextual)
    write_json_atomic(out / "report.json", report)
    return report


def _probe(windows: Windows, train: torch.Tensor, held: torch.Tensor, seed: int) -> dict:
    """The linear ceiling: ridge probes on the layer's own activations (train windows), scored
    on the held-out windows like the SAE features (`alignment.probe_table`)."""
    d = windows.acts.shape[-1]
    x = windows.acts[train].reshape(-1, d)
    rows = torch.randperm(x.shape[0], generator=seeded_generator(seed, "probe"))[:PROBE_ROWS]
    table = probe_table(x[rows], {k: v[train].reshape(-1)[rows] for k, v in windows.factors.items()},
                        windows.acts[held].reshape(-1, d), {k: v[held].reshape(-1) for k, v in windows.factors.items()},
                        continuous=windows.continuous, names=FACTOR_NAMES, within_labelled=SURFACE_FACTORS)
    return {"factors": table, "mean_auroc": _mean_auroc(table)}


def _mean_auroc(factors: dict) -> float:
    """Mean over categorical factor values of the AUROC (the best feature's, or the probe's)."""
    values = [v["auroc"] for f in factors.values() for v in f.values() if isinstance(v, dict) and "auroc" in v]
    return float(sum(values) / len(values)) if values else math.nan
