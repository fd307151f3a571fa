"""Images for the autoencoder jobs: rendered scenes with their per-pixel truth, or a user's
image files, as (N, 3, H, W) tensors in [0, 1], sRGB-encoded as image files are. Renders are
linear RGB (`scenes`); they are encoded here, because pretrained autoencoders (the SD VAE,
TAESD) were trained on sRGB images, and a linear render fed to them is far too dark."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from tqdm.auto import tqdm

from ctxsae_common.errors import InputError
from scenes.render import RenderOutput, render, srgb
from scenes.sampler import sample_scene

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def encoded(rgb_linear: np.ndarray) -> Tensor:
    """A render's linear (H, W, 3) RGB -> the (3, H, W) sRGB-encoded image, float32."""
    return torch.from_numpy(srgb(rgb_linear)).permute(2, 0, 1).float()


def to_batch(outputs: list[RenderOutput]) -> Tensor:
    """Renders -> (N, 3, H, W) sRGB-encoded images in [0, 1]."""
    return torch.stack([encoded(o.rgb.numpy()) for o in outputs])


MAX_PIXELS = 40_000_000  # larger images are refused before decoding (PIL's decompression-bomb limit is ~179M)
BACKGROUND = (1.0, 1.0, 1.0)  # transparent pixels are composited on white


def image_files(folder: str | Path) -> list[Path]:
    """The image files under `folder` (subfolders too), sorted by path; hidden files and folders
    are skipped. A folder without any is a one-line InputError naming what was found."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: no such folder: pass [images] source a folder of image files, or 'scenes'")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not files:
        others = sorted({p.suffix.lower() or p.name for p in folder.rglob("*") if p.is_file()})[:6]
        raise InputError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) found"
                         + (f" (found {', '.join(others)})" if others else "") + ": pass a folder of images")
    return files


def read_image(path: Path, size: int) -> Tensor:
    """One image file as (3, size, size) in [0, 1]: centre-cropped to a square and resized.
    16-bit images keep their precision; transparency is composited on BACKGROUND (white)."""
    _check_header(path)
    try:
        with Image.open(path) as im:
            rgb = _as_float_rgb(im)
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not a readable image ({e}): remove or replace it") from None
    h, w = rgb.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = torch.from_numpy(np.ascontiguousarray(rgb[top : top + side, left : left + side])).permute(2, 0, 1)
    return torch.nn.functional.interpolate(square[None], size=(size, size), mode="bicubic", antialias=True,
                                           align_corners=False)[0].clamp(0, 1)


def _as_float_rgb(im: Image.Image) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1] from any PIL mode, 16-bit ones at full precision."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit greyscale (PNG) or 32-bit integer
        grey = np.asarray(im, dtype=np.float32) / (65535.0 if im.mode != "I" or np.asarray(im).max() > 255 else 255.0)
        return np.repeat(grey[..., None], 3, axis=-1)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = np.asarray(im.convert("RGBA"), dtype=np.float32) / 255.0
        alpha = rgba[..., 3:]
        return rgba[..., :3] * alpha + np.asarray(BACKGROUND, np.float32) * (1 - alpha)
    arr = np.asarray(im)
    if arr.dtype == np.uint16 and arr.ndim == 3:  # 16-bit RGB
        return arr[..., :3].astype(np.float32) / 65535.0
    return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0


def load_image_files(folder: str | Path, size: int, n: int | None = None) -> tuple[Tensor, list[str]]:
    """The first `n` image files under `folder` (all by default) as (n, 3, size, size) in [0, 1],
    and their paths relative to the folder."""
    files = image_files(folder)[:n]
    return torch.stack([read_image(p, size) for p in files]), [str(p.relative_to(Path(folder))) for p in files]


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

    def ensure(self, progress: bool = True, desc: str = "render scenes") -> None:
        """Render the scenes not yet on disk."""
        from scenes.io import write_png, write_truth

        todo = [i for i in range(self.n) if not self._npz(i).is_file()]
        for i in tqdm(todo, desc=desc, unit="image", disable=not progress or not todo):
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
    """The first n image files under a folder, centre-cropped and resized, decoded when loaded
    (only the n used are ever read). Fewer files than n is a warning, not an error."""

    def __init__(self, folder: Path, n: int, size: int):
        self.folder = Path(folder)
        files = image_files(self.folder)
        if len(files) < n:
            warnings.warn(f"{self.folder}: {len(files)} image file(s), fewer than the {n} asked for "
                          "([images] n): using all of them", stacklevel=2)
        self.files = files[:n]
        self.names = [str(p.relative_to(self.folder)) for p in self.files]
        super().__init__(len(self.files), size)
        for p in self.files:  # fail early on an unreadable or oversized file, before any work
            _check_header(p)

    def load(self, a: int, b: int) -> Tensor:
        return torch.stack([read_image(p, self.size) for p in self.files[a:b]])

    def describe(self) -> dict:
        return {"source": str(self.folder), "files": self.names, "size": self.size}


def _check_header(path: Path) -> None:
    """Open the file's header only: a one-line InputError for an unreadable or oversized image."""
    too_big = f"{path}: over the limit of {MAX_PIXELS:,} pixels an image: downscale it first"
    try:
        with Image.open(path) as im:
            if im.width * im.height > MAX_PIXELS:
                raise InputError(f"{path}: {im.width} x {im.height} pixels is over the limit of {MAX_PIXELS:,}: "
                                 "downscale it first")
    except Image.DecompressionBombError:
        raise InputError(too_big) from None
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not a readable image ({e}): remove or replace it") from None
