"""The activation store: windows (N, T, d) in sharded safetensors files with a manifest, a
SHA-256 per shard, resumable writing and streamed reading, so data larger than RAM trains.

    store/manifest.json        identity (hook, axis, grid, model...), shard list with checksums
    store/shard_00000.safetensors   {"activations": (n, T, d) float32, "image_index": (n,) int64}

`visinterp run` and `llm-compare` write stores (store/<hook>/); `ctxsae train --acts` and
`ctxsae evaluate --acts` read a whole store folder, or one shard, checked against its checksum.

A shard is written under a temporary name, hashed and renamed, and only then listed in the
manifest (itself replaced atomically): a killed writer leaves whole shards only, and a writer
opened again on the same folder with the same identity continues after the last listed one."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from ctxsae_common.errors import InputError
from ctxsae_common.files import read_json_object, write_json_atomic
from ctxsae_common.seeds import seeded_generator
from ctxsae_core.distributed import group

MANIFEST = "manifest.json"
FORMAT = "ctxsae-activation-store/1"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Shard:
    """One shard file as the manifest lists it."""

    name: str
    n_windows: int
    sha256: str
    bytes: int


class StoreWriter:
    """Append windows to a store; shards of `shard_windows` windows are flushed as they fill.

    `identity` (hook, axis, model, source...) must match a store already in the folder, which
    is then continued: `done_items` says how many source items (e.g. images) it already holds."""

    grid: tuple[int, int] | None  # the window grid (H, W), recorded in the manifest
    map_hw: tuple[int, int] | None  # image stores: each image's map (h, w), which tiles cut into windows

    def __init__(self, folder: str | Path, identity: dict[str, Any], shard_windows: int = 4096):
        self.folder = Path(folder)
        # compared as JSON reads it back (tuples become lists)
        self.identity, self.shard_windows = json.loads(json.dumps(identity)), max(1, shard_windows)
        self.folder.mkdir(parents=True, exist_ok=True)
        manifest = self.folder / MANIFEST
        if manifest.is_file():
            old = _read_manifest(self.folder)
            _check_identity(self.folder, old, self.identity)
            self.shards = [Shard(**s) for s in old["shards"]]
            self.done_items = int(old["done_items"])
            self.shape = tuple(old["window_shape"]) if old["window_shape"] else None
            self.grid = tuple(old["grid"]) if old.get("grid") else None
            self.map_hw = tuple(old["map_hw"]) if old.get("map_hw") else None
        else:
            self.shards, self.done_items, self.shape, self.grid, self.map_hw = [], 0, None, None, None
        for stray in self.folder.glob(".shard_*.tmp*"):
            stray.unlink()
        self._acts: list[Tensor] = []
        self._index: list[Tensor] = []
        self.pending_items = 0

    @property
    def n_windows(self) -> int:
        """Windows in the shards written so far."""
        return sum(s.n_windows for s in self.shards)

    def add(self, windows: Tensor, item_index: Tensor, items: int) -> None:
        """Windows (n, T, d) cut from `items` source items; item_index (n,) says which item each is from.
        A shard is only written at an item boundary, so resuming never splits an item."""
        if windows.ndim != 3:
            raise InputError(f"windows must be (n, T, d), got {list(windows.shape)}")
        if self.shape is None:
            self.shape = tuple(windows.shape[1:])
        elif tuple(windows.shape[1:]) != self.shape:
            raise InputError(f"windows of shape {list(windows.shape[1:])} do not match the store's {list(self.shape)}")
        self._acts.append(windows.detach().float().cpu().contiguous())
        self._index.append(item_index.long().cpu())
        self.pending_items += items
        if sum(a.shape[0] for a in self._acts) >= self.shard_windows:
            self.flush()

    def flush(self) -> None:
        """Write the pending windows as a shard (at an item boundary) and the manifest."""
        if not self._acts:
            self._write_manifest()
            return
        acts, index = torch.cat(self._acts), torch.cat(self._index)
        name = f"shard_{len(self.shards):05d}.safetensors"
        tmp = self.folder / f".{name}.tmp{os.getpid()}"
        save_file({"activations": acts, "image_index": index}, str(tmp), metadata={"format": FORMAT})
        shard = Shard(name, acts.shape[0], _sha256(tmp), tmp.stat().st_size)
        os.replace(tmp, self.folder / name)
        self.shards.append(shard)
        self.done_items += self.pending_items
        self._acts, self._index, self.pending_items = [], [], 0
        self._write_manifest()

    def _write_manifest(self) -> None:
        write_json_atomic(self.folder / MANIFEST, {
            "format": FORMAT, "identity": self.identity, "window_shape": list(self.shape) if self.shape else None,
            "done_items": self.done_items, "n_windows": self.n_windows, "grid": list(self.grid) if self.grid else None,
            "map_hw": list(self.map_hw) if self.map_hw else None, "shards": [s.__dict__ for s in self.shards]})


def _check_identity(folder: Path, manifest: dict[str, Any], identity: dict[str, Any]) -> None:
    """Raise InputError naming the settings in which a store's manifest differs from `identity`."""
    identity = json.loads(json.dumps(identity))  # as JSON reads it back (tuples become lists)
    if manifest["identity"] != identity:
        changed = sorted(k for k in set(manifest["identity"]) | set(identity)
                         if manifest["identity"].get(k) != identity.get(k))
        raise InputError(f"{folder}: holds a store made with other settings ({', '.join(changed)}): "
                         "pass another output folder or delete this one")


def _read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    if not path.is_file():
        raise InputError(f"{folder}: no {MANIFEST}: not an activation store (harvest one first)")
    manifest = read_json_object(path, "store manifest")
    if manifest.get("format") != FORMAT:
        raise InputError(f"{path}: format {manifest.get('format')!r} is not {FORMAT!r}: harvest the store again")
    return manifest


# --- harvesting under torchrun -------------------------------------------------------------------
# Each rank harvests a contiguous run of whole units (a harvest's batches) into a store of its own
# (a hidden sub-folder, resumable like any store); `merge_rank_stores` then moves every rank's
# shards, in rank order, into the one store: the same windows in the same order, with the same
# item indices, as one process harvesting everything.


def rank_items(n_items: int, unit: int, world: int, rank: int) -> tuple[int, int]:
    """Rank `rank`'s items [lo, hi) of n_items among `world` ranks: whole units of `unit` items
    (so batch-dependent choices fall as in one process), contiguous, in rank order."""
    units = -(-n_items // max(1, unit))
    per, extra = divmod(units, world)
    first = rank * per + min(rank, extra)
    last = first + per + (1 if rank < extra else 0)
    return min(n_items, first * unit), min(n_items, last * unit)


def rank_folder(folder: str | Path) -> Path:
    """Where this rank harvests: `folder` itself in one process, else a hidden sub-folder of it."""
    g = group()
    return Path(folder) if g.world == 1 else Path(folder) / f".rank{g.rank}-of-{g.world}"


def finished(folder: str | Path, n_items: int, identity: dict[str, Any]) -> bool:
    """Whether `folder` holds a finished store of `n_items` items made with `identity` (a harvest
    then has nothing to do); a store made with other settings is a one-line error. Under torchrun,
    so is a store one process left unfinished: ranks harvest only from the start."""
    folder = Path(folder)
    if not is_store(folder):
        return False
    manifest = _read_manifest(folder)
    _check_identity(folder, manifest, identity)
    done = int(manifest["done_items"])
    if done >= n_items:
        return True
    if group().world > 1:
        raise InputError(f"{folder}: a store one process left at {done} of {n_items} items: finish it without "
                         "torchrun, or delete the folder to harvest it with several ranks")
    return False


def merge_rank_stores(folder: str | Path, n_items: int) -> None:
    """After every rank has flushed its store: rank 0 moves the shards of each rank's store into
    `folder` (renamed in order) and writes the one manifest; every rank waits for it. One process:
    nothing to do."""
    g = group()
    if g.world == 1:
        return
    folder = Path(folder)
    g.barrier()
    if g.is_main:
        parts = [folder / f".rank{r}-of-{g.world}" for r in range(g.world)]
        manifests = [_read_manifest(p) for p in parts]
        done = sum(int(m["done_items"]) for m in manifests)
        if done != n_items:
            raise InputError(f"{folder}: the ranks' stores hold {done} of {n_items} items: harvest again")
        first = next(m for m in manifests if m["window_shape"])
        shards = []
        for part, manifest in zip(parts, manifests):
            for entry in manifest["shards"]:
                name = f"shard_{len(shards):05d}.safetensors"
                os.replace(part / entry["name"], folder / name)
                shards.append({**entry, "name": name})
        write_json_atomic(folder / MANIFEST, {
            "format": FORMAT, "identity": first["identity"], "window_shape": first["window_shape"],
            "done_items": done, "n_windows": sum(s["n_windows"] for s in shards), "grid": first.get("grid"),
            "map_hw": first.get("map_hw"), "shards": shards})
        for part in parts:
            shutil.rmtree(part)
    g.barrier()


def is_store(path: str | Path) -> bool:
    """Whether `path` is a store folder (it holds a manifest)."""
    return (Path(path) / MANIFEST).is_file()


def store_shard(path: str | Path) -> tuple["ActivationStore", int] | None:
    """(the store, the shard's index) when `path` is a shard file its folder's manifest lists, else None."""
    path = Path(path)
    if not is_store(path.parent):
        return None
    store = ActivationStore(path.parent)
    names = [s.name for s in store.shards]
    return (store, names.index(path.name)) if path.name in names else None


class ActivationStore:
    """A finished store, read shard by shard. Every read checks the shard's size, and `verify()`
    its checksum, so a truncated or corrupted shard is named instead of training on garbage."""

    def __init__(self, folder: str | Path, verify: bool = False):
        self.folder = Path(folder)
        manifest = _read_manifest(self.folder)
        self.identity: dict[str, Any] = manifest["identity"]
        self.shards = [Shard(**s) for s in manifest["shards"]]
        if not self.shards:
            raise InputError(f"{self.folder}: the store holds no windows: harvest it again")
        self.window_shape = tuple(manifest["window_shape"])
        self.grid = tuple(manifest["grid"]) if manifest.get("grid") else None
        self.map_hw = tuple(manifest["map_hw"]) if manifest.get("map_hw") else None
        self.done_items = int(manifest["done_items"])
        self.n_windows = sum(s.n_windows for s in self.shards)
        self.offsets = torch.tensor([0] + [s.n_windows for s in self.shards]).cumsum(0)
        if verify:
            self.verify()

    def verify(self, shards: list[int] | None = None) -> None:
        """Check the SHA-256 of every shard (or of those at `shards`) against the manifest; a
        mismatch is a one-line InputError."""
        for s in self.shards if shards is None else [self.shards[i] for i in shards]:
            path = self._path(s)
            if _sha256(path) != s.sha256:
                raise InputError(f"{path}: checksum mismatch, the shard is corrupted: harvest the store again "
                                 "(delete the shard and its manifest entry, or the folder)")

    def _path(self, s: Shard) -> Path:
        path = self.folder / s.name
        if not path.is_file():
            raise InputError(f"{path}: shard listed in the manifest is missing: harvest the store again")
        if path.stat().st_size != s.bytes:
            raise InputError(f"{path}: {path.stat().st_size} bytes, the manifest says {s.bytes}: the shard is "
                             "truncated or corrupted: harvest the store again")
        return path

    def read_shard(self, i: int) -> dict[str, Tensor]:
        """Shard i's tensors ("activations" (n, T, d), "image_index" (n,)), checked for size and NaN/Inf."""
        path = self._path(self.shards[i])
        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise InputError(f"{path}: unreadable shard ({str(e).splitlines()[0]}): harvest the store again") from None
        if not torch.isfinite(tensors["activations"]).all():
            raise InputError(f"{path}: holds NaN or Inf activations: check the model and harvest again")
        return tensors

    def gather(self, indices: Tensor, shard_acts=None) -> Tensor:
        """Windows at global indices, in the order given, reading only the shards they lie in
        (through `shard_acts(i)` when given, e.g. a cache)."""
        indices = indices.long()
        shard_acts = shard_acts or (lambda i: self.read_shard(i)["activations"])
        shard_of = torch.searchsorted(self.offsets, indices, right=True) - 1
        out = torch.empty(len(indices), *self.window_shape)
        for i in shard_of.unique().tolist():
            sel = (shard_of == i).nonzero().squeeze(1)
            out[sel] = shard_acts(i)[indices[sel] - self.offsets[i]]
        return out

    def image_index(self) -> Tensor:
        """(N,) the source item (image, or token window) of every stored window."""
        return torch.cat([self.read_shard(i)["image_index"] for i in range(len(self.shards))])

    def batches(self, indices: Tensor, batch_windows: int, seed: int = 0) -> "StoreBatches":
        """Endless seeded batches over the windows at `indices` (see StoreBatches)."""
        return StoreBatches(self, indices, batch_windows, seed)


def derived_store(source: ActivationStore, folder: str | Path, identity: dict[str, Any],
                  transform: Callable[[Tensor, Tensor], Tensor]) -> ActivationStore:
    """A store at `folder` holding `transform(activations, image_index)` of every shard of
    `source`, shard for shard (same windows, same order, same item indices), e.g. activations
    minus a per-token table. `identity` names the transform; with the source's identity and
    checksums it is recorded, so a folder made from other data or another transform is a
    one-line error, and an interrupted one continues where it stopped. One process writes it."""
    full = {"source": source.identity, "source_sha256": [s.sha256 for s in source.shards], "transform": identity}
    if not finished(folder, len(source.shards), full):
        writer = StoreWriter(folder, full, shard_windows=1)  # one shard out per shard in
        writer.grid, writer.map_hw = source.grid, source.map_hw
        for i in range(writer.done_items, len(source.shards)):
            tensors = source.read_shard(i)
            writer.add(transform(tensors["activations"], tensors["image_index"]), tensors["image_index"], 1)
        writer.flush()
    return ActivationStore(folder)


class StoreBatches:
    """Endless seeded batches over a subset of a store's windows, holding one shard at a time:
    each epoch visits the shards in a fresh order and the windows of each shard in a fresh
    order. `iter_from(step)` restarts the same stream at any step (for trainer resume). Under
    data-parallel training each rank reads only its slice of every global batch of
    `batch_windows` x ranks windows (`ctxsae_core.data.WindowBatches` does the same)."""

    def __init__(self, store: ActivationStore, indices: Tensor, batch_windows: int, seed: int = 0):
        if len(indices) == 0:
            raise InputError(f"{store.folder}: no windows to train on: harvest more images")
        self.store, self.seed, self.group = store, seed, group()
        self.indices = indices.long().sort().values
        self.batch_windows = max(1, min(batch_windows, len(indices) // self.group.world))
        self.global_windows = self.batch_windows * self.group.world
        self.per_epoch = len(indices) // self.global_windows
        if self.per_epoch == 0:
            raise InputError(f"{store.folder}: {len(indices)} windows cannot fill a batch on each of "
                             f"{self.group.world} ranks: use fewer ranks or more data")

    @property
    def epoch_positions(self) -> int:
        """Positions in one epoch: the whole batches of one pass over the data, every rank's."""
        return self.per_epoch * self.global_windows * self.store.window_shape[0]

    def _epoch_order(self, epoch: int) -> Tensor:
        gen = seeded_generator(self.seed, "batches", epoch)
        shard_of = torch.searchsorted(self.store.offsets, self.indices, right=True) - 1
        parts = []
        for i in torch.randperm(len(self.store.shards), generator=gen).tolist():
            mine = self.indices[shard_of == i]
            parts.append(mine[torch.randperm(len(mine), generator=gen)])
        return torch.cat(parts)

    def iter_from(self, step: int) -> Iterator[Tensor]:
        """The batch stream from `step` on, endless: the same batches a stream from 0 yields there."""
        epoch, offset = divmod(step, self.per_epoch)
        cache: dict[int, Tensor] = {}

        def shard_acts(i: int) -> Tensor:
            if i not in cache:
                if len(cache) >= 2:  # shards are visited in runs, so two in memory is enough
                    cache.pop(next(iter(cache)))
                cache[i] = self.store.read_shard(i)["activations"]
            return cache[i]

        mine = self.group.rank_slice(self.global_windows)
        while True:
            order = self._epoch_order(epoch)
            for b in range(offset, self.per_epoch):
                yield self.store.gather(order[b * self.global_windows : (b + 1) * self.global_windows][mine], shard_acts)
            epoch, offset = epoch + 1, 0

    def __iter__(self) -> Iterator[Tensor]:
        return self.iter_from(0)
