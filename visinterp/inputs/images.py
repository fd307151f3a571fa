"""Images for the autoencoder jobs: rendered scenes with their per-pixel truth, or a user's
image files, as (N, 3, H, W) tensors in [0, 1], sRGB-encoded as image files are. Renders are
linear RGB (`scenes`); they are encoded here, because pretrained autoencoders (the SD VAE,
TAESD) were trained on sRGB images, and a linear render fed to them is far too dark."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from tqdm.auto import tqdm

from ctxsae_common.errors import InputError
from scenes.render import RenderOutput, render, srgb
from scenes.sampler import sample_scene

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def render_outputs(seeds: Iterable[int], size: int, progress: bool = True, desc: str = "render scenes") -> list[RenderOutput]:
    """Renders (with their truth) of the sampled scenes of `seeds`."""
    seeds = list(seeds)
    return [render(sample_scene(s), size) for s in tqdm(seeds, desc=desc, disable=not progress)]


def encoded(rgb_linear: np.ndarray) -> Tensor:
    """A render's linear (H, W, 3) RGB -> the (3, H, W) sRGB-encoded image, float32."""
    return torch.from_numpy(srgb(rgb_linear)).permute(2, 0, 1).float()


def to_batch(outputs: list[RenderOutput]) -> Tensor:
    """Renders -> (N, 3, H, W) sRGB-encoded images in [0, 1]."""
    return torch.stack([encoded(o.rgb.numpy()) for o in outputs])


def render_scenes(seeds: Iterable[int], size: int, progress: bool = True, desc: str = "render scenes") -> Tensor:
    """The sampled scenes of `seeds` as (N, 3, size, size) sRGB images in [0, 1]."""
    return to_batch(render_outputs(seeds, size, progress, desc))


def load_image_files(folder: str | Path, size: int) -> tuple[Tensor, list[str]]:
    """Every image file in `folder`, centre-cropped to a square and resized to `size`."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
    if not files:
        raise InputError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) found: pass a folder of images")
    out = []
    for p in files:
        try:
            im = Image.open(p).convert("RGB")
        except OSError as e:
            raise InputError(f"{p}: not a readable image ({e}): remove or replace it") from None
        side = min(im.size)
        left, top = (im.width - side) // 2, (im.height - side) // 2
        im = im.crop((left, top, left + side, top + side)).resize((size, size), Image.LANCZOS)
        out.append(torch.from_numpy(np.asarray(im, dtype=np.float32) / 255).permute(2, 0, 1))
    return torch.stack(out), [p.name for p in files]


class ImageSource:
    """Images [0, n) of a run, loaded in slices; rendered scenes also give per-pixel truth."""

    has_truth = False

    def __init__(self, n: int, size: int):
        self.n, self.size = n, size

    def load(self, a: int, b: int) -> Tensor:
        """Images a..b-1 as (b - a, 3, size, size) in [0, 1]."""
        raise NotImplementedError

    def describe(self) -> dict:
        """What the images are, for the store's identity and the report."""
        raise NotImplementedError


class SceneImages(ImageSource):
    """Scenes seed..seed+n-1 rendered once into `folder` (PNG to look at, .npz with the float
    image and its truth), skipping those already there, so an interrupted run resumes."""

    has_truth = True

    def __init__(self, folder: Path, n: int, size: int, seed: int = 0):
        super().__init__(n, size)
        self.folder, self.seed = Path(folder), seed

    def _npz(self, i: int) -> Path:
        return self.folder / f"{i:05d}.npz"

    def ensure(self, progress: bool = True) -> None:
        """Render the scenes not yet on disk."""
        from scenes.io import write_png, write_truth

        todo = [i for i in range(self.n) if not self._npz(i).is_file()]
        for i in tqdm(todo, desc="render scenes", unit="image", disable=not progress or not todo):
            out = render(sample_scene(self.seed + i), self.size)
            write_png(self.folder / f"{i:05d}.png", out.rgb.numpy())
            write_truth(self._npz(i), out)

    def truth(self, i: int) -> dict[str, np.ndarray]:
        """Scene i's per-pixel truth (the arrays `scenes.io.write_truth` wrote)."""
        from scenes.io import read_truth

        return read_truth(self._npz(i))

    def load(self, a: int, b: int) -> Tensor:
        return torch.stack([encoded(self.truth(i)["rgb"]) for i in range(a, b)])

    def describe(self) -> dict:
        return {"source": "scenes", "seeds": [self.seed, self.seed + self.n - 1], "size": self.size}


class FolderImages(ImageSource):
    """The first n image files of a folder, centre-cropped and resized (held in memory)."""

    def __init__(self, folder: Path, n: int, size: int):
        images, self.names = load_image_files(folder, size)
        super().__init__(min(n, images.shape[0]), size)
        self.images, self.folder = images[: self.n], Path(folder)

    def load(self, a: int, b: int) -> Tensor:
        return self.images[a:b]

    def describe(self) -> dict:
        return {"source": str(self.folder), "files": self.names[: self.n], "size": self.size}
