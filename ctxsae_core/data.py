"""Activation windows on disk and in memory: loading with clear errors, the held-out split
every job uses, seeded batch streams that can restart at any step, and the shuffled-context
permutation."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from ctxsae_common.errors import InputError
from ctxsae_common.seeds import seeded_generator
from ctxsae_core.distributed import Group
from ctxsae_core.distributed import group as current_group

ACTS_SUFFIXES = (".npy", ".safetensors")


def load_activations(path: str | Path) -> Tensor:
    """Read one float tensor [N, T, d] or [N, d] from a .npy or .safetensors file, as float32.

    Raises InputError naming the file and the fix for a missing, empty, truncated or
    non-float file, a file with several tensors, and NaN/Inf values."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file: pass --acts a .npy or .safetensors file")
    if path.suffix not in ACTS_SUFFIXES:
        raise InputError(f"{path}: unsupported file type {path.suffix!r}: save activations as .npy or .safetensors")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: the file is empty: write the activations again")
    x = _read_npy(path) if path.suffix == ".npy" else _read_safetensors(path)
    if not x.is_floating_point():
        raise InputError(f"{path}: activations must be floats, got {x.dtype}: save them as float32")
    if x.ndim not in (2, 3):
        raise InputError(f"{path}: expected one tensor [N, T, d] (or [N, d] for per-position SAEs), "
                         f"got shape {list(x.shape)}")
    if x.numel() == 0:
        raise InputError(f"{path}: the tensor {list(x.shape)} holds no activations")
    x = x.float()
    check_finite(x, str(path))
    return x


def _read_npy(path: Path) -> Tensor:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise InputError(f"{path}: not a readable .npy file ({str(e).splitlines()[0]}); "
                         "it may be truncated: write it again with numpy.save") from None
    if not isinstance(arr, np.ndarray):
        raise InputError(f"{path}: holds an archive, not one array: save a single array with numpy.save")
    return torch.from_numpy(np.array(arr))


def _read_safetensors(path: Path) -> Tensor:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise InputError(f"{path}: not a readable .safetensors file ({str(e).splitlines()[0]}); "
                         "it may be truncated: write it again") from None
    if "activations" in tensors:
        return tensors["activations"]
    if len(tensors) != 1:
        raise InputError(f"{path}: holds {len(tensors)} tensors ({', '.join(sorted(tensors)) or 'none'}): "
                         "store one tensor, or name the one to use 'activations'")
    return next(iter(tensors.values()))


def check_finite(x: Tensor, where: str, chunk: int = 4096) -> None:
    """Raise InputError at the first window holding NaN or Inf."""
    for start in range(0, x.shape[0], chunk):
        bad = ~torch.isfinite(x[start : start + chunk])
        if bad.any():
            where_bad = bad.nonzero()[0].tolist()
            n_bad = int(bad.reshape(bad.shape[0], -1).any(1).sum())
            loc = f"row {start + where_bad[0]}" + (f", position {where_bad[1]}" if x.ndim == 3 else "")
            raise InputError(f"{where}: {n_bad}+ rows hold NaN or Inf (first at {loc}): "
                             "drop or recompute those activations")


def as_windows(x: Tensor) -> Tensor:
    """[N, d] -> [N, 1, d] (a per-position data set is windows of one position)."""
    return x.unsqueeze(1) if x.ndim == 2 else x


def split_indices(n: int, fraction: float, seed: int, what: str = "windows") -> tuple[Tensor, Tensor]:
    """The held-out split every job uses: (train, held-out) indices into n items (windows or
    images), each sorted, at least one of each; round(n * fraction) are held out, drawn from
    the seed's "holdout" stream."""
    if n < 2:
        raise InputError(f"need at least 2 {what} to hold one out for evaluation, got {n}")
    if not 0 < fraction < 1:
        raise InputError(f"held-out fraction {fraction} must lie strictly between 0 and 1")
    n_held = min(max(1, round(n * fraction)), n - 1)
    perm = torch.randperm(n, generator=seeded_generator(seed, "holdout"))
    return perm[n_held:].sort().values, perm[:n_held].sort().values


def split_holdout(windows: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """`split_indices` applied to windows (N, T, d): (train windows, held-out windows)."""
    train, held = split_indices(windows.shape[0], fraction, seed)
    return windows[train], windows[held]


def shuffle_positions(x: Tensor, generator: torch.Generator, rows: slice | None = None,
                      total: int | None = None) -> tuple[Tensor, Tensor]:
    """The shuffled-context control: permute the T positions of each window independently.
    Returns the shuffled windows (B, T, D) and the permutations (B, T). Permutations are drawn
    on the CPU for `total` windows (default B) and `rows` of them are used, so a rank holding
    part of a global batch shuffles its windows as one process would shuffle the whole."""
    total = x.shape[0] if total is None else total
    perm = torch.rand((total, x.shape[1]), generator=generator)[rows or slice(None)].argsort(dim=1).to(x.device)
    return x.gather(1, perm.unsqueeze(-1).expand_as(x)), perm


@runtime_checkable
class Resumable(Protocol):
    """A batch stream that can restart at any step: the trainer resumes a run through it (a
    plain iterator is resumed by skipping the batches already seen)."""

    def iter_from(self, step: int) -> Iterator[Tensor]:
        """The batch stream from `step` on: the same batches a stream from 0 yields there."""


@runtime_checkable
class Epochs(Protocol):
    """A batch stream that knows how many training positions one pass over its data holds."""

    @property
    def epoch_positions(self) -> int:
        """Positions in one epoch: the whole batches of one pass over the data, every rank's."""


class WindowBatches:
    """Endless batches of `batch_windows` windows from an in-memory tensor (N, T, D), in a
    fresh seeded order every epoch; `iter_from(step)` restarts the same stream at any step.

    Under data-parallel training (`ctxsae_core.distributed`), a global batch holds
    `batch_windows` windows per rank, drawn as one process would draw it, and each rank reads
    only its slice: the ranks' parts are disjoint and together are the single-process batch."""

    def __init__(self, windows: Tensor, batch_windows: int, seed: int = 0, group: Group | None = None):
        self.windows, self.seed = windows, seed
        self.group = group or current_group()
        self.batch_windows = max(1, min(batch_windows, windows.shape[0] // self.group.world))
        self.global_windows = self.batch_windows * self.group.world
        self.per_epoch = windows.shape[0] // self.global_windows
        if self.per_epoch == 0:
            raise InputError(f"{windows.shape[0]} windows cannot fill one batch on each of {self.group.world} ranks: "
                             "use fewer ranks or more data")

    @property
    def epoch_positions(self) -> int:
        """Positions in one epoch: the whole batches of one pass over the data, every rank's."""
        return self.per_epoch * self.global_windows * self.windows.shape[1]

    def iter_from(self, step: int) -> Iterator[Tensor]:
        """The batch stream from `step` on, endless: the same batches a stream from 0 yields there."""
        epoch, offset = divmod(step, self.per_epoch)
        mine = self.group.rank_slice(self.global_windows)
        while True:
            perm = torch.randperm(self.windows.shape[0], generator=seeded_generator(self.seed, "batches", epoch))
            for i in range(offset, self.per_epoch):
                yield self.windows[perm[i * self.global_windows : (i + 1) * self.global_windows][mine]]
            epoch, offset = epoch + 1, 0

    def __iter__(self) -> Iterator[Tensor]:
        return self.iter_from(0)
