"""Image SAEs against the scenes' ground truth: per-patch factor labels on a hook's grid,
factor alignment and within-object switch rates of an SAE's features, and where the
autoencoder's own reconstruction errors fall by scene factor."""

from __future__ import annotations

import math
import statistics

import numpy as np
import torch
from torch import Tensor

from ctxsae_core.metrics import switch_rate
from scenes.query import NORMAL_BINS, normal_bin
from scenes.spec import KINDS, MATERIALS, TEXTURES
from visinterp.analysis.alignment import alignment_table, unnamed_features
from visinterp.harvest.maps import tile_windows

COLOURS = ("red", "yellow", "green", "cyan", "blue", "magenta", "grey")  # 6 hue sectors, then unsaturated
FACTOR_NAMES = {"kind_id": KINDS, "material_id": MATERIALS, "texture_id": TEXTURES, "normal_bin": NORMAL_BINS,
                "background": ("object", "background"), "shadowed": ("lit", "shadowed"), "colour": COLOURS}
SURFACE_FACTORS = ("kind_id", "material_id", "texture_id", "normal_bin", "shadowed")  # -1 on background
# the factors constant over an object (and over the background): the best feature for one of their
# values tracks an object. Colour is left out (shading turns a dark face grey), as are normal,
# shadow and depth.
OBJECT_FACTORS = ("kind_id", "material_id", "texture_id", "background")
CONTINUOUS = ("depth",)


def colour_bin(rgb: np.ndarray) -> Tensor:
    """(H, W, 3) in [0, 1] -> (H, W) index into COLOURS: the hue sector (60 degrees each,
    centred on red, yellow, ...) or grey when saturation < 0.25 or value < 0.1."""
    from matplotlib.colors import rgb_to_hsv

    hsv = torch.from_numpy(rgb_to_hsv(np.clip(rgb, 0, 1)))
    sector = ((hsv[..., 0] * 6 + 0.5).floor().long()) % 6
    grey = (hsv[..., 1] < 0.25) | (hsv[..., 2] < 0.1)
    return torch.where(grey, len(COLOURS) - 1, sector)


def pixel_factors(truth: dict[str, np.ndarray]) -> dict[str, Tensor]:
    """Per-pixel factor labels (H, W) of one render: ids (-1 on background), background,
    shadowed (a surface some light does not reach), normal bin, the rendered colour's hue
    sector, depth (background: the farthest surface depth in the image, so the factor stays
    finite)."""
    oid = torch.from_numpy(truth["object_id"].astype(np.int64))
    bg = oid < 0
    out = {k: torch.from_numpy(truth[k].astype(np.int64)) for k in ("object_id", "kind_id", "material_id", "texture_id")}
    out["background"] = bg.long()
    out["shadowed"] = torch.where(bg, -1, (~torch.from_numpy(truth["lit"])).any(-1).long())
    normals = torch.from_numpy(truth["normal"]).reshape(-1, 3)
    out["normal_bin"] = torch.where(bg, -1, normal_bin(normals).reshape(bg.shape))
    out["colour"] = colour_bin(truth["rgb"])
    depth = torch.from_numpy(truth["depth"]).float()
    far = depth[~bg].max() if (~bg).any() else torch.tensor(1.0)
    out["depth"] = torch.where(bg, far, depth)
    return out


def grid_factors(truths: list[dict[str, np.ndarray]], grid_hw: tuple[int, int], tile: int) -> dict[str, Tensor]:
    """Factors of each window position (N_windows, T), read at each patch's centre pixel and
    cut into windows exactly as `harvest.tile_windows` cuts the maps."""
    h, w = grid_hw
    per_image = [pixel_factors(t) for t in truths]
    out = {}
    for name in per_image[0]:
        maps = []
        for f in per_image:
            ph, pw = f[name].shape
            rows = ((torch.arange(h) + 0.5) * ph / h).long()
            cols = ((torch.arange(w) + 0.5) * pw / w).long()
            maps.append(f[name][rows][:, cols])
        stacked = torch.stack(maps)[:, None].float()  # (N, 1, h, w)
        windows, _ = tile_windows(stacked, tile)
        out[name] = windows[..., 0] if name in CONTINUOUS else windows[..., 0].long()
    return out


def feature_alignment(state: Tensor, factors: dict[str, Tensor], threshold: float) -> dict:
    """Best feature per factor value (AUROC; correlation for depth), unnamed features, and the
    mean within-object switch rate of the live features and of the object features (the best
    feature for each value of the OBJECT_FACTORS, with the mean of those values' best AUROCs), for
    state codes (N, T, F)."""
    flat = state.reshape(-1, state.shape[-1])
    labels = {k: v.reshape(-1) for k, v in factors.items() if k != "object_id"}
    table = alignment_table(flat, labels, continuous=CONTINUOUS, names=FACTOR_NAMES, within_labelled=SURFACE_FACTORS)
    unnamed = unnamed_features(table["best_by_feature"], flat, threshold)
    rates = switch_rate(state > 0, factors["object_id"])
    live = (flat > 0).any(0)
    best = [v for name in OBJECT_FACTORS for v in table["factors"].get(name, {}).values()]
    tracking = sorted({v["feature"] for v in best})
    return {"factors": table["factors"], "unnamed": unnamed, "best_by_feature": table["best_by_feature"].tolist(),
            "within_object_switch_rate": float(rates[live].nanmean()) if live.any() else math.nan,
            "object_features": tracking,
            "switch_rate_of_object_features": float(rates[tracking].nanmean()) if tracking else math.nan,
            "object_label_auroc": statistics.fmean(v["auroc"] for v in best) if best else math.nan,
            "n_live": int(live.sum())}


def error_by_factor(decoded: Tensor, truths: list[dict[str, np.ndarray]]) -> dict[str, dict[str, float]]:
    """Mean squared error per pixel of the autoencoder's own reconstruction (N, 3, H, W) against
    the renders, by background vs object, kind, material and texture."""
    errs = torch.stack([(decoded[i].permute(1, 2, 0) - torch.from_numpy(t["rgb"]).clamp(0, 1)).pow(2).mean(-1)
                        for i, t in enumerate(truths)]).reshape(-1)
    facts = [pixel_factors(t) for t in truths]
    out: dict[str, dict[str, float]] = {}
    for name in ("background", "kind_id", "material_id", "texture_id"):
        lab = torch.stack([f[name] for f in facts]).reshape(-1)
        names = FACTOR_NAMES[name]
        out[name] = {names[v] if 0 <= v < len(names) else "background": float(errs[lab == v].mean())
                     for v in lab.unique().tolist()}
    return out
