"""The main job's typed config (`visinterp run --config FILE`): one dataclass per TOML table,
each field's help text doubling as documentation, unknown keys named in a one-line error."""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ctxsae_core.axes import AXIS_KINDS
from ctxsae_core.config import _build, param, require
from ctxsae_core.errors import InputError
from visinterp.autoencoders.offline import OfflineAEConfig


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


PER_POSITION_KINDS = ("topk", "batchtopk")
CARRIES = ("gated", "attention")


@dataclass(frozen=True)
class SweepConfig:
    """The SAEs trained per hook: each per-position kind at each k, JumpReLU at each L0
    coefficient, and for each carry the contextual SAE (and its shuffled-context control) at
    each k_contextual."""

    width: int = param(256, "features per SAE")
    per_position: tuple[str, ...] = param(("topk",), "per-position kinds swept over k: 'topk', 'batchtopk'")
    k: tuple[int, ...] = param((2, 4, 8, 16), "per-position budgets (active features per position)")
    jumprelu: tuple[float, ...] = param((), "JumpReLU L0-penalty coefficients, one per-position SAE each (its L0 "
                                        "is learned, not set); [] trains none")
    jumprelu_threshold: float = param(0.001, "JumpReLU's initial threshold (Rajamanoharan et al. 2024: 0.001); "
                                      "runs of a few hundred steps barely move it, so there it largely sets L0")
    carries: tuple[str, ...] = param(("gated",), "contextual carries, each with its shuffled control: 'gated', 'attention'")
    k_contextual: tuple[int, ...] = param((1, 2, 4, 8), "contextual BatchTopK innovation budgets")
    tokens: int = param(300_000, "training positions per SAE")
    batch_windows: int = param(16, "windows per optimiser step")
    lr: float = param(3e-3, "Adam learning rate")
    seed: int = param(0, "seed of every SAE")

    def __post_init__(self) -> None:
        for kind in self.per_position:
            require(kind in PER_POSITION_KINDS, f"sweep.per_position has {kind!r}: choose from {list(PER_POSITION_KINDS)}")
        for carry in self.carries:
            require(carry in CARRIES, f"sweep.carries has {carry!r}: choose from {list(CARRIES)}")
        require(len(set(self.carries)) == len(self.carries) and len(set(self.per_position)) == len(self.per_position),
                "sweep.carries and sweep.per_position must not repeat a name")
        require(all(k >= 1 for k in (*self.k, *self.k_contextual)), "sweep.k and sweep.k_contextual must be >= 1")
        require(all(c > 0 for c in self.jumprelu), f"sweep.jumprelu={list(self.jumprelu)}: coefficients must be > 0")
        require(self.jumprelu_threshold > 0, f"sweep.jumprelu_threshold={self.jumprelu_threshold} must be > 0")
        require(self.width >= max((*self.k, *self.k_contextual, 1)), f"sweep.width={self.width} must be >= every k")


@dataclass(frozen=True)
class ReportConfig:
    """What the report shows."""

    features: int = param(6, "features per gallery section")
    top_images: int = param(6, "top-activating images per feature")
    steer_scale: float = param(4.0, "steering adds this many times the feature's typical activation")
    unnamed_threshold: float = param(0.75, "a feature whose best factor AUROC stays below this is unnamed")


@dataclass(frozen=True)
class RunConfig:
    autoencoder: str = param("offline", "'offline' (the default trained on rendered scenes), a TAESD-family "
                             "folder (*_encoder.pth / *_decoder.pth), a diffusers folder, or a hub id")
    images: ImagesConfig = field(default_factory=ImagesConfig)
    offline_ae: OfflineAEConfig = field(default_factory=OfflineAEConfig)
    harvest: HarvestConfig = field(default_factory=HarvestConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_CLASSES = {"images": ImagesConfig, "offline_ae": OfflineAEConfig, "harvest": HarvestConfig,
            "sweep": SweepConfig, "report": ReportConfig}


def _tuples(values: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}


def run_config_from_dict(values: dict[str, Any], where: str) -> RunConfig:
    unknown = sorted(set(values) - set(_CLASSES) - {"autoencoder"})
    if unknown:
        raise InputError(f"{where}: unknown table or key {', '.join(unknown)}; known: autoencoder, "
                         f"{', '.join(_CLASSES)}")
    parts = {}
    for name, cls in _CLASSES.items():
        table = values.get(name, {})
        if not isinstance(table, dict):
            raise InputError(f"{where}: [{name}] must be a table")
        parts[name] = _build(cls, _tuples(table), f"{where} [{name}]")
    return RunConfig(autoencoder=str(values.get("autoencoder", "offline")), **parts)


def read_toml(path: str | Path, example: str) -> dict[str, Any]:
    """A TOML config file as a dict, with one-line errors naming the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such config file: pass --config a TOML file such as {example}")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"{path}: not valid TOML ({e})") from None


def load_run_config(path: str | Path | None) -> RunConfig:
    """The default config, or the one in a TOML file (tables override the defaults field by field)."""
    if path is None:
        return RunConfig()
    return run_config_from_dict(read_toml(path, "configs/quick.toml"), str(path))
