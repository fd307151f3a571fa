"""Pictures of where SAE features fire on a coordinate MLP's inputs."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from scenes.figures import pyplot, save_figure


def pixel_maps(states: Tensor, where: Tensor, features: list[int], view: int = 0) -> Tensor:
    """(len(features), H, W): each feature's largest activation over the positions that map to
    each pixel of `view` (along the ray, or the pixel itself)."""
    size_h, size_w = int(where[..., 1].max()) + 1, int(where[..., 2].max()) + 1
    sel = where[..., 0] == view
    pix = (where[..., 1] * size_w + where[..., 2])[sel]  # (M,)
    vals = states[sel][:, features]  # (M, k)
    maps = torch.zeros(size_h * size_w, len(features))
    maps = maps.scatter_reduce(0, pix[:, None].expand_as(vals), vals, reduce="amax")
    return maps.T.reshape(len(features), size_h, size_w)


def feature_pictures(states: Tensor, where: Tensor, features: list[int], path: Path, title: str) -> None:
    """`pictures_figure` saved as a PNG at `path`."""
    save_figure(pictures_figure(states, where, features, title), path, dpi=100)


def pictures_figure(states: Tensor, where: Tensor, features: list[int], title: str, view: int = 0):
    """One panel per feature: its largest activation at each pixel of `view`."""
    plt = pyplot()
    maps = pixel_maps(states, where, features, view)
    fig, axes = plt.subplots(1, len(features), figsize=(2.2 * len(features), 2.5), squeeze=False)
    for ax, f, m in zip(axes[0], features, maps):
        ax.imshow(m.numpy(), cmap="magma")
        ax.set_title(f"feature {f}", fontsize=8)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    return fig
