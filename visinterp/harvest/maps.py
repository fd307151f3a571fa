"""Harvesting image maps: images -> an autoencoder's feature maps at named hooks -> windows
along a spatial context axis -> one activation store per hook, resumable where it stopped.

A map (C, H, W) becomes windows of T = tile * tile positions (or the whole map, T = H * W),
each in row-major order: the layout both image axes (`raster`, `quadtree`) of the core read.
`untile` puts windows back into maps."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from einops import rearrange
from torch import Tensor
from tqdm.auto import tqdm

from ctxsae_common.errors import InputError
from ctxsae_core.distributed import group
from ctxsae_core.store import StoreWriter, finished, merge_rank_stores, rank_folder, rank_items
from visinterp.models.autoencoders.base import ImageAutoencoder


def tile_windows(maps: Tensor, tile: int = 0) -> tuple[Tensor, tuple[int, int]]:
    """(N, C, H, W) -> windows (N * nh * nw, tile * tile, C), image-major then tile row-major,
    and the window grid (tile, tile); tile 0 keeps the whole map as one window."""
    n, c, h, w = maps.shape
    if not tile or (tile >= h and tile >= w):
        return rearrange(maps, "n c h w -> n (h w) c"), (h, w)
    if h % tile or w % tile:
        raise InputError(f"a {h}x{w} map does not split into {tile}x{tile} tiles: choose a tile that divides "
                         "both sides, or 0 for whole maps")
    return rearrange(maps, "n c (a p) (b q) -> (n a b) (p q) c", p=tile, q=tile), (tile, tile)


def untile(windows: Tensor, n: int, h: int, w: int, tile: int) -> Tensor:
    """Inverse of `tile_windows`: windows (n * a * b, T, C) -> maps (n, C, h, w)."""
    if not tile or (tile >= h and tile >= w):
        return rearrange(windows, "n (h w) c -> n c h w", h=h, w=w)
    return rearrange(windows, "(n a b) (p q) c -> n c (a p) (b q)", n=n, a=h // tile, p=tile)


def harvest(ae: ImageAutoencoder, load_images: Callable[[int, int], Tensor], n_images: int, hooks: list[str],
            out: Path, identity: dict, tile: int = 0, batch_images: int = 16, shard_windows: int = 4096,
            progress: bool = True) -> dict[str, Path]:
    """Write one store per hook under out/<hook>/ for images [0, n_images); `load_images(a, b)`
    returns images a..b-1 as (b - a, 3, H, W) in [0, 1]. Stores already holding some images
    (same identity) continue after them. Under torchrun each rank harvests its own run of
    batches and the stores are merged at the end (`ctxsae_core.store.merge_rank_stores`): the
    same stores as one process."""
    g = group()
    folders = {h: out / h for h in hooks}
    identities = {h: {**identity, **ae.metadata(), "hook": h, "tile": tile} for h in hooks}
    todo = [h for h in hooks if not finished(folders[h], n_images, identities[h])]
    lo, hi = rank_items(n_images, batch_images, g.world, g.rank)
    writers = {h: StoreWriter(rank_folder(folders[h]), identities[h], shard_windows) for h in todo}
    start = lo + min((w.done_items for w in writers.values()), default=hi - lo)
    bar = tqdm(total=hi - lo, initial=start - lo, desc=f"harvest {', '.join(hooks)}", unit="image",
               disable=not progress or not g.is_main or not todo)
    for a in range(start, hi, batch_images):
        b = min(a + batch_images, hi)
        maps = ae.capture(load_images(a, b), todo)
        for h, writer in writers.items():
            windows, grid = tile_windows(maps[h], tile)
            per_image = windows.shape[0] // (b - a)
            image_index = torch.arange(a, b).repeat_interleave(per_image)
            keep = image_index >= lo + writer.done_items + writer.pending_items
            if keep.any():
                writer.grid, writer.map_hw = grid, tuple(maps[h].shape[-2:])
                writer.add(windows[keep], image_index[keep], int(image_index[keep].unique().numel()))
        bar.update(b - a)
    bar.close()
    for h, writer in writers.items():
        writer.flush()
        merge_rank_stores(folders[h], n_images)
    return folders
