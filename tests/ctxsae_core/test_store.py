import json

import pytest
import torch

from ctxsae_common.errors import InputError
from visinterp.harvest.maps import tile_windows
from ctxsae_core.store import ActivationStore, StoreWriter, derived_store

IDENTITY = {"hook": "latent", "axis": "raster"}


def _write(folder, windows, per_item, shard_windows, identity=IDENTITY, stop_after=None):
    writer = StoreWriter(folder, identity, shard_windows)
    n_items = windows.shape[0] // per_item
    for item in range(writer.done_items + writer.pending_items, n_items if stop_after is None else stop_after):
        sl = slice(item * per_item, (item + 1) * per_item)
        writer.add(windows[sl], torch.full((per_item,), item), 1)
    return writer


def test_save_then_read_round_trips_every_window_in_order(tmp_path):
    x = torch.randn(10, 4, 3)
    _write(tmp_path, x, per_item=2, shard_windows=3).flush()
    store = ActivationStore(tmp_path, verify=True)
    assert [s.n_windows for s in store.shards] == [4, 4, 2]  # shards close at item boundaries
    assert torch.equal(store.gather(torch.arange(10)), x)
    assert torch.equal(store.gather(torch.tensor([9, 0, 5])), x[[9, 0, 5]])
    assert store.image_index().tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]


def test_an_interrupted_write_resumes_to_the_same_store(tmp_path):
    x = torch.randn(12, 4, 3)
    _write(tmp_path / "whole", x, 2, 4).flush()
    _write(tmp_path / "cut", x, 2, 4, stop_after=5)  # killed: the unflushed 5th item is lost
    resumed = _write(tmp_path / "cut", x, 2, 4)
    assert resumed.done_items == 6 and len(resumed.shards) == 3  # items 0-3 survived the kill, 4-5 rewritten
    resumed.flush()
    whole, cut = ActivationStore(tmp_path / "whole"), ActivationStore(tmp_path / "cut")
    assert torch.equal(cut.gather(torch.arange(12)), whole.gather(torch.arange(12)))
    assert cut.image_index().tolist() == whole.image_index().tolist()


def test_a_store_with_other_settings_is_not_continued(tmp_path):
    _write(tmp_path, torch.randn(4, 2, 3), 2, 2).flush()
    with pytest.raises(InputError, match="other settings \\(axis\\)"):
        StoreWriter(tmp_path, {**IDENTITY, "axis": "quadtree"})


def test_truncated_and_corrupted_shards_are_named(tmp_path):
    _write(tmp_path, torch.randn(8, 2, 3), 2, 4).flush()
    shard = tmp_path / "shard_00001.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[:-10])
    with pytest.raises(InputError, match="shard_00001.safetensors: .*truncated"):
        ActivationStore(tmp_path).gather(torch.arange(8))
    flipped = bytearray(data)
    flipped[-5] ^= 0xFF
    shard.write_bytes(bytes(flipped))
    with pytest.raises(InputError, match="shard_00001.safetensors: checksum mismatch"):
        ActivationStore(tmp_path, verify=True)


def test_a_truncated_manifest_is_named(tmp_path):
    _write(tmp_path, torch.randn(4, 2, 3), 2, 2).flush()
    text = (tmp_path / "manifest.json").read_text()
    (tmp_path / "manifest.json").write_text(text[: len(text) // 2])
    with pytest.raises(InputError, match="manifest.json: not valid JSON"):
        ActivationStore(tmp_path)


def test_batches_cover_each_window_once_per_epoch_and_restart_at_any_step(tmp_path):
    x = torch.arange(24.0).reshape(12, 1, 2)
    _write(tmp_path, x, 1, 5).flush()
    store = ActivationStore(tmp_path)
    train = torch.tensor([0, 2, 3, 5, 7, 8, 10, 11])
    batches = store.batches(train, batch_windows=4, seed=3)
    it = iter(batches)
    epoch = torch.cat([next(it), next(it)])
    assert sorted(epoch[:, 0, 0].div(2).long().tolist()) == train.tolist()
    later = [next(it) for _ in range(3)]
    assert torch.equal(next(batches.iter_from(3)), later[1])
    assert not torch.equal(later[0], epoch[:4]) or not torch.equal(later[1], epoch[4:])  # fresh order per epoch


def test_manifest_records_identity_grid_and_checksums(tmp_path):
    writer = _write(tmp_path, torch.randn(4, 6, 3), 2, 2)
    writer.grid = (2, 3)
    writer.flush()
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["identity"] == IDENTITY and manifest["grid"] == [2, 3] and manifest["n_windows"] == 4
    assert all(len(s["sha256"]) == 64 for s in manifest["shards"])


def test_a_derived_store_holds_the_transform_of_each_window_and_resumes(tmp_path):
    x = torch.randn(12, 4, 3)
    _write(tmp_path / "src", x, 2, 4).flush()
    source = ActivationStore(tmp_path / "src")
    plus_item = lambda acts, index: acts + index[:, None, None]  # noqa: E731 - depends on the item index too
    seen = []

    def dies_at_shard_2(acts, index):
        seen.append(int(index[0]))
        if len(seen) == 3:
            raise KeyboardInterrupt
        return plus_item(acts, index)

    with pytest.raises(KeyboardInterrupt):
        derived_store(source, tmp_path / "out", {"add": "item"}, dies_at_shard_2)
    assert ActivationStore(tmp_path / "out").n_windows == 8  # the two shards done survive
    calls = []
    store = derived_store(source, tmp_path / "out", {"add": "item"},
                          lambda a, i: calls.append(1) or plus_item(a, i))
    assert len(calls) == 1  # only the missing shard was computed
    index = source.image_index()
    assert torch.equal(store.gather(torch.arange(12)), x + index[:, None, None])
    assert torch.equal(store.image_index(), index) and store.window_shape == source.window_shape
    assert derived_store(source, tmp_path / "out", {"add": "item"}, None).n_windows == 12  # finished: nothing to do
    with pytest.raises(InputError, match="other settings"):
        derived_store(source, tmp_path / "out", {"add": "twice"}, plus_item)
    changed = torch.randn(12, 4, 3)
    _write(tmp_path / "src2", changed, 2, 4).flush()
    with pytest.raises(InputError, match="other settings"):  # same identity, other data (checksums differ)
        derived_store(ActivationStore(tmp_path / "src2"), tmp_path / "out", {"add": "item"}, plus_item)


def test_tile_windows_cut_row_major_tiles():
    maps = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4)
    whole, grid = tile_windows(maps)
    assert grid == (4, 4) and whole.shape == (2, 16, 1) and whole[1, 5, 0] == 16 + 5
    tiles, grid = tile_windows(maps, 2)
    assert grid == (2, 2) and tiles.shape == (8, 4, 1)
    assert tiles[1, :, 0].tolist() == [2, 3, 6, 7]  # image 0, tile row 0, tile col 1
    with pytest.raises(InputError, match="does not split into 3x3"):
        tile_windows(maps, 3)
