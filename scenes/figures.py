"""Figures of coordinate-MLP fits: fit beside truth with an error map, and the learning curve."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from scenes.render import srgb


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path, dpi: int = 110) -> None:
    """Write `fig` to `path` through a temporary file and a rename, then close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    pyplot().close(fig)
    os.replace(tmp, path)


def fit_figure(images: dict, path: Path, title: str) -> None:
    """Truth | fit | per-pixel error (mean absolute over RGB); a second row of depth maps when
    `images` has truth_depth and fit_depth."""
    plt = pyplot()
    truth, fit = images["truth"].numpy(), images["fit"].numpy()
    rows = 2 if "truth_depth" in images else 1
    fig, axes = plt.subplots(rows, 3, figsize=(9, 3.2 * rows), squeeze=False)
    err = np.abs(fit - truth).mean(-1)
    panels = [(truth, "truth (renderer)", None), (fit, "fit", None), (err, f"|error| (mean {err.mean():.3f})", "inferno")]
    if rows == 2:
        td, fd = images["truth_depth"].numpy(), images["fit_depth"].numpy()
        finite = np.isfinite(td)
        hi = td[finite].max() if finite.any() else 1.0
        td_show = np.where(finite, td, np.nan)
        fd_show = np.where(finite, fd, np.nan)
        derr = np.abs(fd_show - td_show)
        panels += [(td_show, "true depth", "viridis"), (fd_show, "fitted expected depth", "viridis"),
                   (derr, f"|depth error| (mean {np.nanmean(derr) if finite.any() else 0:.3f})", "inferno")]
        vmax = {3: hi, 4: hi}
    else:
        vmax = {}
    for i, (img, name, cmap) in enumerate(panels):
        ax = axes.flat[i]
        shown = ax.imshow(srgb(img) if cmap is None else img, cmap=cmap, vmin=0 if cmap else None,
                          vmax=vmax.get(i))
        if cmap:
            fig.colorbar(shown, ax=ax, fraction=0.046)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path)


def curve_figure(history: list[dict], key: str, path: Path, title: str) -> None:
    """`key` (a PSNR) against training seconds."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([h["seconds"] for h in history], [h[key] for h in history], marker="o")
    ax.set_xlabel("training seconds")
    ax.set_ylabel(key.replace("_", " ") + " (dB)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    save_figure(fig, path)
