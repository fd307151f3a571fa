"""The image job's typed config (`visinterp run --config FILE`): one dataclass per TOML table,
each field's help text doubling as documentation (docs/config.md), every value's type checked
and unknown keys named in a one-line error."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ctxsae_common import typed
from ctxsae_common.files import read_toml
from ctxsae_common.typed import param, require
from ctxsae_core.axes import AXIS_KINDS
from ctxsae_core.sweep import SweepConfig
from visinterp.models.autoencoders.offline import OfflineAEConfig


@dataclass(frozen=True)
class ImagesConfig:
    """Which images are encoded."""

    source: str = param("scenes", "'scenes' renders scenes (seeds seed..seed+n-1), or a folder of image files")
    n: int = param(256, "images (rendered scenes, or the first n files of the folder)")
    size: int = param(64, "image side in pixels (a multiple of the autoencoder's downsampling, 8)")
    seed: int = param(0, "seed of the first scene")
    held_out: float = param(0.2, "fraction of images held out for evaluation and the report")

    def __post_init__(self) -> None:
        require(self.n >= 5, f"images.n={self.n} must be at least 5 (some are held out)")
        require(self.size >= 16 and self.size % 8 == 0, f"images.size={self.size} must be a multiple of 8, >= 16")
        require(0 < self.held_out < 1, f"images.held_out={self.held_out} must lie in (0, 1)")


@dataclass(frozen=True)
class HarvestConfig:
    """Which maps are harvested and how they become windows."""

    hooks: tuple[str, ...] = param(("latent", "encoder.mid"), "hook points: 'latent', 'encoder.down.N', "
                                   "'encoder.mid', 'decoder.mid', 'decoder.up.N'")
    axis: str = param("raster", "context axis over each window's patches: 'raster' or 'quadtree'")
    tile: int = param(0, "windows are tile x tile patches of a map; 0 = the whole map is one window")
    batch_images: int = param(16, "images per autoencoder forward pass")
    shard_windows: int = param(2048, "windows per store shard (bounds the memory of training)")

    def __post_init__(self) -> None:
        require(self.axis in AXIS_KINDS[1:], f"harvest.axis={self.axis!r}: choose 'raster' or 'quadtree'")
        require(len(self.hooks) >= 1, "harvest.hooks is empty: name at least one hook, e.g. ['latent']")
        require(self.tile >= 0 and self.batch_images >= 1 and self.shard_windows >= 1,
                "harvest.tile must be >= 0, batch_images and shard_windows >= 1")


@dataclass(frozen=True)
class ReportConfig:
    """What the report shows."""

    features: int = param(6, "features per gallery section")
    top_images: int = param(6, "top-activating images per feature")
    steer_scale: float = param(4.0, "steering adds this many times the feature's typical activation")
    unnamed_threshold: float = param(0.75, "a feature whose best factor AUROC stays below this is unnamed")


@dataclass(frozen=True)
class RunConfig:
    """Every setting of `visinterp run`, one field per TOML table (configs/default.toml)."""

    autoencoder: str = param("offline", "'offline' (the default trained on rendered scenes), a TAESD-family "
                             "folder (*_encoder.pth / *_decoder.pth), a diffusers folder, or a hub id")
    images: ImagesConfig = field(default_factory=ImagesConfig)
    offline_ae: OfflineAEConfig = field(default_factory=OfflineAEConfig)
    harvest: HarvestConfig = field(default_factory=HarvestConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    def __post_init__(self) -> None:
        require(self.sweep.subtract == "none", f"sweep.subtract={self.sweep.subtract!r} needs token ids: image "
                "maps have none, so set it to 'none' (llm-compare supports 'unigram')")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (config.json of a run); `run_config_from_dict` inverts it."""
        return dataclasses.asdict(self)


def run_config_from_dict(values: dict[str, Any], where: str) -> RunConfig:
    """The defaults with each table of `values` overriding them field by field."""
    return typed.from_dict(RunConfig, values, where, defaults=RunConfig())


def load_run_config(path: str | Path | None) -> RunConfig:
    """The default config, or the one in a TOML file (tables override the defaults field by field)."""
    if path is None:
        return RunConfig()
    return run_config_from_dict(read_toml(path, "configs/quick.toml"), str(path))
