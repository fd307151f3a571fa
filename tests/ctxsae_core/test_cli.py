"""`ctxsae` end to end, and its contract for bad input: exit code 2, one line, nothing written."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from ctxsae_core.checkpoint import load_sae
from ctxsae_core.cli import main


def _acts(tmp_path, shape=(48, 16, 8), name="acts.npy", seed=0):
    x = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
    path = tmp_path / name
    np.save(path, x)
    return path


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_train_then_evaluate_contextual(tmp_path, capsys):
    acts = _acts(tmp_path)
    code, out, err = _run(capsys, "train", "--acts", acts, "--arch", "contextual", "--width", 32, "--k", 3,
                          "--axis", "raster", "--grid", "4x4", "--tokens", 3000, "--batch-tokens", 256,
                          "--carry-coeff", 0.5, "--no-progress", "--out", tmp_path / "run")
    assert code == 0, err
    assert "contextual (raster)" in out
    assert load_sae(tmp_path / "run")[0].config.carry_coeff == 0.5
    for name in ("config.json", "model.safetensors", "axis.json", "metrics.jsonl", "eval.json", "train_config.json"):
        assert (tmp_path / "run" / name).is_file(), name
    code, out, err = _run(capsys, "evaluate", "--sae", tmp_path / "run", "--acts", acts, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert {"fvu", "mse", "l0", "state_l0", "dead_fraction", "n_positions"} <= set(result)
    assert result["n_positions"] == 48 * 16 and result["axis"] == "raster"
    code, out, _ = _run(capsys, "evaluate", "--sae", tmp_path / "run", "--acts", acts, "--json", "--shuffle-context")
    assert json.loads(out)["shuffle_context"] is True


def test_per_position_defaults_and_export(tmp_path, capsys):
    acts = _acts(tmp_path, shape=(300, 8))  # [N, d] for a per-position SAE
    code, out, err = _run(capsys, "train", "--acts", acts, "--tokens", 2000, "--no-progress", "--out", tmp_path / "run")
    assert code == 0, err
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["arch"] == "topk" and cfg["width"] == 64 and cfg["activation"]["k"] == 32  # 8 * d, k 32
    code, _, err = _run(capsys, "export", "--sae", tmp_path / "run", "--out", tmp_path / "lens")
    assert code == 0, err
    assert json.loads((tmp_path / "lens" / "cfg.json").read_text())["architecture"] == "topk"
    code, out, err = _run(capsys, "import-saelens", tmp_path / "lens", "--out", tmp_path / "back")
    assert code == 0 and "topk, d 8, width 64" in out, err
    ours, back = (json.loads(_run(capsys, "evaluate", "--sae", tmp_path / name, "--acts", acts, "--json")[1])
                  for name in ("run", "back"))
    assert back["fvu"] == pytest.approx(ours["fvu"], rel=1e-4) and back["l0"] == pytest.approx(ours["l0"])
    code, _, err = _run(capsys, "import-saelens", tmp_path / "run", "--out", tmp_path / "bad")
    assert code == 2 and "no cfg.json, so not a SAELens SAE folder" in err and not (tmp_path / "bad").exists()


def test_shuffled_context_leaves_a_per_position_sae_unchanged(tmp_path, capsys):
    acts = _acts(tmp_path)
    assert _run(capsys, "train", "--acts", acts, "--width", 32, "--k", 4, "--tokens", 2000,
                "--no-progress", "--out", tmp_path / "run")[0] == 0
    plain = json.loads(_run(capsys, "evaluate", "--sae", tmp_path / "run", "--acts", acts, "--json")[1])
    shuffled = json.loads(_run(capsys, "evaluate", "--sae", tmp_path / "run", "--acts", acts, "--json",
                               "--shuffle-context")[1])
    assert shuffled["fvu"] == pytest.approx(plain["fvu"], rel=1e-5)
    assert shuffled["l0"] == pytest.approx(plain["l0"])


def _bad_inputs(tmp_path):
    good = _acts(tmp_path)
    nan = tmp_path / "nan.npy"
    x = np.zeros((4, 16, 8), np.float32)
    x[2, 3, 1] = np.inf
    np.save(nan, x)
    empty = tmp_path / "empty.npy"
    empty.write_bytes(b"")
    trunc = tmp_path / "trunc.safetensors"
    save_file({"activations": torch.randn(32, 16, 8)}, str(trunc))
    trunc.write_bytes(trunc.read_bytes()[:300])
    flat = _acts(tmp_path, shape=(40, 8), name="flat.npy")
    return [
        (["--acts", tmp_path / "none.npy"], "no such file"),
        (["--acts", empty], "empty"),
        (["--acts", trunc], "truncated"),
        (["--acts", nan], "NaN or Inf"),
        (["--acts", flat, "--arch", "contextual"], r"needs windows \[N, T, d\]"),
        (["--acts", good, "--width", 16, "--k", 17], "larger than width"),
        (["--acts", good, "--arch", "relu", "--k", 4], "--k does not apply to relu"),
        (["--acts", good, "--axis", "raster", "--grid", "3x5"], "has 15 cells"),
        (["--acts", good, "--arch", "gated"], "invalid choice"),
        (["--acts", good, "--max-grad-norm", -1], r"max_grad_norm=-1.0 must be >= 0"),
        (["--acts", good, "--arch", "contextual", "--carry-coeff", -1], r"carry_coeff=-1.0 must be >= 0"),
        (["--acts", good, "--carry-coeff", 1], "--carry-coeff applies to --arch contextual only, not topk"),
    ]


def test_bad_train_input_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys):
    for argv, match in _bad_inputs(tmp_path):
        out_dir = tmp_path / "out"
        code, _, err = _run(capsys, "train", *argv, "--no-progress", "--out", out_dir)
        assert code == 2, argv
        assert err.count("\n") == 1 and re.search(match, err), (argv, err)
        assert not out_dir.exists(), argv


def test_usage_errors_are_one_line_with_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "ctxsae_core.cli", "train", "--acts", "x.npy", "--out", "o",
                           "--arch", "gated"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "invalid choice: 'gated'" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_evaluate_rejects_activations_of_another_width(tmp_path, capsys):
    acts = _acts(tmp_path)
    assert _run(capsys, "train", "--acts", acts, "--width", 32, "--k", 4, "--tokens", 1000,
                "--no-progress", "--out", tmp_path / "run")[0] == 0
    other = _acts(tmp_path, shape=(4, 16, 5), name="other.npy")
    code, _, err = _run(capsys, "evaluate", "--sae", tmp_path / "run", "--acts", other)
    assert code == 2 and "d=5" in err and "d=8" in err and err.count("\n") == 1
    code, _, err = _run(capsys, "evaluate", "--sae", tmp_path / "missing", "--acts", acts)
    assert code == 2 and "no such SAE folder" in err


def test_resuming_into_a_folder_trained_on_other_data_is_refused(tmp_path, capsys):
    first, other = _acts(tmp_path, name="a.npy", seed=0), _acts(tmp_path, name="b.npy", seed=1)
    common = ["--width", 32, "--k", 4, "--tokens", 3000, "--batch-tokens", 256, "--no-progress", "--out", tmp_path / "run"]
    assert _run(capsys, "train", "--acts", first, *common)[0] == 0
    before = (tmp_path / "run" / "eval.json").read_text()
    code, _, err = _run(capsys, "train", "--acts", other, *common)
    assert code == 2 and err.count("\n") == 1
    assert "holds a run with a different data config (differs in acts, sample_sha256)" in err
    assert (tmp_path / "run" / "eval.json").read_text() == before  # nothing overwritten


def test_a_run_reports_its_epochs_and_warns_when_it_has_not_converged(tmp_path, capsys):
    acts = _acts(tmp_path, shape=(200, 16, 8))  # 180 training windows of 16: 2880 positions an epoch
    code, out, err = _run(capsys, "train", "--acts", acts, "--width", 32, "--k", 4, "--tokens", 256 * 6,
                          "--batch-tokens", 256, "--lr", "1e-2", "--no-progress", "--out", tmp_path / "run")
    assert code == 0
    saved = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert saved["tokens"] == 1536 and saved["epochs"] == pytest.approx(1536 / 2816)  # 11 whole batches of 16 windows
    assert ("warning: held-out FVU still improved" in err) == (saved["converged"] is False)
    # a few steps of training are still improving at the end, and the warning says how much of that the decay made
    assert saved["converged"] is False and saved["fvu_gain_last_quarter"] > 0
    assert f"{saved['decay_share_of_last_quarter_gain']:.0%} of it after the learning rate started to decay" in err
    assert "epochs)" in out


def _store(folder, n=40, grid=(2, 4), d=6, shard_windows=16):
    """A store of n windows on a 2x4 grid, written as the jobs write one."""
    from ctxsae_core.store import StoreWriter

    x = torch.from_numpy(np.random.default_rng(1).normal(size=(n, grid[0] * grid[1], d)).astype(np.float32))
    writer = StoreWriter(folder, {"hook": "latent", "axis": "raster"}, shard_windows)
    writer.grid = grid
    for i in range(0, n, 4):
        writer.add(x[i:i + 4], torch.full((4,), i // 4), 1)
    writer.flush()
    return x


def test_train_and_evaluate_on_a_store_and_on_one_shard(tmp_path, capsys):
    from ctxsae_core.store import ActivationStore

    x = _store(tmp_path / "store")
    code, _, err = _run(capsys, "train", "--acts", tmp_path / "store", "--arch", "contextual", "--axis", "raster",
                        "--k", 2, "--tokens", 1024, "--no-progress", "--out", tmp_path / "run")
    assert code == 0, err
    axis = json.loads((tmp_path / "run" / "axis.json").read_text())
    assert axis["grid"] == [2, 4]  # the store's grid, not a square one (8 positions have none)
    np.save(tmp_path / "all.npy", x.numpy())
    whole, from_store = (json.loads(_run(capsys, "evaluate", "--sae", tmp_path / "run", "--acts", a, "--json")[1])
                         for a in (tmp_path / "all.npy", tmp_path / "store"))
    assert from_store["fvu"] == pytest.approx(whole["fvu"], rel=1e-6)
    store = ActivationStore(tmp_path / "store")
    shard = tmp_path / "store" / store.shards[1].name
    one = json.loads(_run(capsys, "evaluate", "--sae", tmp_path / "run", "--acts", shard, "--json")[1])
    assert one["n_positions"] == store.shards[1].n_windows * 8
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF  # same size, one byte of a value flipped: only the checksum sees it
    shard.write_bytes(bytes(data))
    for acts in (shard, tmp_path / "store"):
        code, _, err = _run(capsys, "evaluate", "--sae", tmp_path / "run", "--acts", acts)
        assert code == 2 and "checksum mismatch, the shard is corrupted" in err
    code, _, err = _run(capsys, "train", "--acts", tmp_path / "store", "--out", tmp_path / "run2")
    assert code == 2 and "checksum mismatch" in err and not (tmp_path / "run2").exists()
