"""Writing renders to disk: PNG images, ground-truth .npz files, factors.jsonl and the contact
sheet. Every file is written to a temporary name and renamed, so none is ever half-written."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file

from ctxsae_common.files import save_tensors_atomic, write_bytes_atomic, write_json_atomic
from scenes.coord_fit import FitConfig, build_model
from scenes.render import RenderOutput, srgb
from scenes.spec import Scene, SceneError


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    """A float image in [0, 1] as uint8, rounded."""
    return (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)


def write_png(path: Path, rgb: np.ndarray) -> None:
    """An (H, W, 3) uint8 image, or a float image in linear RGB [0, 1] (a render), sRGB-encoded
    as PNG viewers expect, as PNG."""
    buf = io.BytesIO()
    Image.fromarray(rgb if rgb.dtype == np.uint8 else to_uint8(srgb(rgb))).save(buf, format="PNG")
    write_bytes_atomic(path, buf.getvalue())


def write_truth(path: Path, out: RenderOutput) -> None:
    """A render's per-pixel truth as a compressed .npz, written whole or not at all."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **out.arrays())
    write_bytes_atomic(path, buf.getvalue())


def read_truth(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a truth .npz written by `write_truth`."""
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def id_colours(ids: np.ndarray) -> np.ndarray:
    """Object ids (H, W) as a categorical colour image (background -1 black)."""
    from matplotlib import colormaps

    table = (np.array(colormaps["tab10"].colors) * 255).astype(np.uint8)
    out = table[np.maximum(ids, 0) % len(table)]
    out[ids < 0] = 0
    return out


def depth_colours(depth: np.ndarray) -> np.ndarray:
    """Depth (H, W) as a colour image, near bright; background (inf) black."""
    from matplotlib import colormaps

    finite = np.isfinite(depth)
    if not finite.any():
        return np.zeros((*depth.shape, 3), np.uint8)
    lo, hi = depth[finite].min(), depth[finite].max()
    norm = 1 - (np.where(finite, depth, hi) - lo) / max(hi - lo, 1e-6)
    out = (colormaps["magma"](norm)[..., :3] * 255).astype(np.uint8)
    out[~finite] = 0
    return out


def contact_sheet(path: Path, renders: list[RenderOutput], columns: int = 4) -> None:
    """A grid of tiles, each RGB | object id | depth side by side, with 2 px gutters."""
    tiles = [np.concatenate([to_uint8(srgb(r.rgb.numpy())), id_colours(r.object_id.numpy()),
                             depth_colours(r.depth.numpy())], axis=1) for r in renders]
    h, w, _ = tiles[0].shape
    rows = -(-len(tiles) // columns)
    cols = min(columns, len(tiles))
    sheet = np.full((rows * (h + 2) + 2, cols * (w + 2) + 2, 3), 255, np.uint8)
    for n, tile in enumerate(tiles):
        r, c = divmod(n, columns)
        sheet[2 + r * (h + 2) : 2 + r * (h + 2) + h, 2 + c * (w + 2) : 2 + c * (w + 2) + w] = tile
    write_png(path, sheet)


def save_fit(folder: Path, target: str, scene: Scene, cfg: FitConfig, model: torch.nn.Module) -> None:
    """A fitted coordinate MLP as fit.json (target, config, scene) + model.safetensors."""
    save_tensors_atomic(folder / "model.safetensors", dict(model.state_dict()))
    write_json_atomic(folder / "fit.json", {"target": target, "config": dataclasses.asdict(cfg), "scene": scene.to_dict()})


def load_fit(folder: str | Path) -> tuple[str, Scene, FitConfig, torch.nn.Module]:
    """(target, scene, config, model in eval mode) of a folder written by `scenes coord-fit`."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / "fit.json").read_text())
        state = load_file(str(folder / "model.safetensors"))
    except FileNotFoundError as e:
        raise SceneError(f"{folder} is not a coord-fit folder ({Path(e.filename).name} missing): run "
                         "'scenes coord-fit --out DIR' first") from None
    except (ValueError, KeyError, OSError, SafetensorError) as e:  # bad JSON, a truncated weights file
        raise SceneError(f"{folder} holds an unreadable fit ({type(e).__name__}: {e}); fit it again") from None
    cfg = FitConfig(**{**meta["config"], "progress": False})
    model = build_model(meta["target"], cfg)
    model.load_state_dict(state)
    return meta["target"], Scene.from_dict(meta["scene"]), cfg, model.eval()
