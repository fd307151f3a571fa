import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from ctxsae_common.seeds import seeded_generator
from ctxsae_core.data import WindowBatches, load_activations, shuffle_positions, split_holdout
from ctxsae_common.errors import InputError


def test_loads_npy_and_safetensors(tmp_path):
    x = np.random.randn(5, 4, 3).astype(np.float32)
    np.save(tmp_path / "a.npy", x)
    save_file({"activations": torch.from_numpy(x), "other": torch.zeros(2)}, str(tmp_path / "a.safetensors"))
    assert torch.equal(load_activations(tmp_path / "a.npy"), torch.from_numpy(x))
    assert torch.equal(load_activations(tmp_path / "a.safetensors"), torch.from_numpy(x))
    np.save(tmp_path / "h.npy", x.astype(np.float16))
    assert load_activations(tmp_path / "h.npy").dtype == torch.float32


def _bad(tmp_path, name, writer):
    path = tmp_path / name
    writer(path)
    return path


@pytest.mark.parametrize("name,writer,match", [
    ("missing.npy", lambda p: None, "no such file"),
    ("empty.npy", lambda p: p.write_bytes(b""), "empty"),
    ("x.csv", lambda p: p.write_text("1,2"), "unsupported file type"),
    ("rank4.npy", lambda p: np.save(p, np.zeros((2, 2, 2, 2), np.float32)), r"\[N, T, d\]"),
    ("ints.npy", lambda p: np.save(p, np.zeros((2, 3), np.int64)), "must be floats"),
    ("nan.npy", lambda p: np.save(p, np.array([[[0.0, 1.0]], [[np.nan, 0.0]]], np.float32)), "NaN or Inf .*row 1"),
    ("two.safetensors", lambda p: save_file({"a": torch.zeros(2, 3), "b": torch.zeros(2, 3)}, str(p)), "2 tensors"),
])
def test_bad_files_raise_one_line_errors(tmp_path, name, writer, match):
    path = _bad(tmp_path, name, writer)
    with pytest.raises(InputError, match=match) as err:
        load_activations(path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("suffix", [".npy", ".safetensors"])
def test_truncated_files_are_named(tmp_path, suffix):
    x = torch.randn(64, 8, 16)
    path = tmp_path / f"acts{suffix}"
    np.save(path, x.numpy()) if suffix == ".npy" else save_file({"activations": x}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated"):
        load_activations(path)


def test_holdout_split_is_seeded_and_disjoint():
    w = torch.arange(20.0).view(20, 1, 1)
    tr, ev = split_holdout(w, 0.25, seed=3)
    tr2, ev2 = split_holdout(w, 0.25, seed=3)
    assert torch.equal(ev, ev2) and ev.shape[0] == 5 and tr.shape[0] == 15
    assert sorted(torch.cat([tr, ev]).flatten().tolist()) == list(range(20))


def test_shuffle_permutes_within_each_window_only():
    x = torch.arange(3 * 6 * 2.0).view(3, 6, 2)
    y, perm = shuffle_positions(x, seeded_generator(0, "shuffle_eval"))
    for b in range(3):
        assert sorted(y[b, :, 0].tolist()) == sorted(x[b, :, 0].tolist())  # same rows, new order
        assert torch.equal(y[b], x[b, perm[b]])
    assert not torch.equal(y, x)


def test_window_batches_restart_at_any_step():
    w = torch.randn(10, 4, 2)
    src = WindowBatches(w, batch_windows=3, seed=1)
    it = iter(src)
    first = [next(it) for _ in range(7)]  # crosses an epoch (3 batches per epoch)
    again = src.iter_from(4)
    for i in range(4, 7):
        assert torch.equal(next(again), first[i])
    assert not torch.equal(first[0], first[3])  # a new order each epoch
