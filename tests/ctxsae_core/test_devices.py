"""Devices: `--device` resolution and its one-line errors (on the CPU everywhere), and on a GPU
machine (`gpu` marker, skipped elsewhere) training on CUDA against the CPU, checkpoints moved
between the two, bfloat16 autocast, and the CLI on CUDA."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from ctxsae_common.device import check_dtype, creating_on, resolve_device
from ctxsae_common.errors import InputError
from ctxsae_core import BatchTopK, ContextualConfig, SAEConfig, TopK, TrainConfig, make_axis
from ctxsae_core.checkpoint import build_sae, load_sae, save_sae
from ctxsae_core.data import WindowBatches
from ctxsae_core.evaluate import evaluate
from ctxsae_core.trainer import Trainer

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the errors of a machine without CUDA")


def test_devices_resolve_and_bad_ones_say_what_to_pass():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(InputError, match="'tpu' is not a device: pass auto, cpu, cuda or cuda:N"):
        resolve_device("tpu")
    with pytest.raises(InputError, match="cuda:99"):
        resolve_device("cuda:99")
    with pytest.raises(InputError, match="bfloat16 autocasts on CUDA only"):
        check_dtype("bfloat16", torch.device("cpu"))


def test_creating_on_a_device_makes_tensors_there_and_adds_no_mode_on_the_default_one():
    with creating_on("meta"):
        assert torch.zeros(2).device.type == "meta" and torch._C._is_torch_function_mode_enabled()
    with creating_on("cpu"):  # the default already: no torch-function mode between every call and torch
        assert torch.zeros(2).device.type == "cpu" and not torch._C._is_torch_function_mode_enabled()


@NO_CUDA
def test_cuda_without_cuda_is_one_line_with_exit_2_and_nothing_written(tmp_path):
    np.save(tmp_path / "a.npy", np.random.default_rng(0).standard_normal((20, 4, 6)).astype(np.float32))
    proc = subprocess.run([sys.executable, "-m", "ctxsae_core.cli", "train", "--acts", str(tmp_path / "a.npy"),
                           "--out", str(tmp_path / "o"), "--device", "cuda"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "no CUDA device is usable here" in proc.stderr and "pass --device cpu or auto" in proc.stderr
    assert not (tmp_path / "o").exists()


def _data(n=64, T=8, d=16):
    g = torch.Generator().manual_seed(1)
    atoms = torch.randn(24, d, generator=g)
    codes = (torch.rand(n, T, 24, generator=g) < 0.15).float() * torch.rand(n, T, 24, generator=g)
    return codes @ atoms + 0.05 * torch.randn(n, T, d, generator=g)


CONFIGS = {"topk": SAEConfig(d_in=16, width=64, activation=TopK(k=4)),
           "batchtopk": SAEConfig(d_in=16, width=64, activation=BatchTopK(k=4)),
           "gated": ContextualConfig(d_in=16, width=64, activation=BatchTopK(k=3), carry="gated")}


def _trained(name, device, dtype=torch.float64, steps=6, autocast="float32"):
    torch.manual_seed(0)
    model = build_sae(CONFIGS[name]).to(dtype)
    data = _data().to(dtype)
    cfg = TrainConfig(tokens=steps * 8 * 8, lr=3e-3, progress=False, eval_every=0, checkpoint_every=0)
    Trainer(model, cfg, make_axis("tokens", 8), device=device, dtype=autocast).fit(WindowBatches(data, 8, seed=2))
    return model


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(CONFIGS))
def test_training_on_cuda_matches_the_cpu(name):
    """The same steps on the two devices, in float64: the same weights up to rounding."""
    cpu, cuda = _trained(name, "cpu"), _trained(name, "cuda")
    assert next(cuda.parameters()).device.type == "cuda"
    for (n, a), (_, b) in zip(cpu.state_dict().items(), cuda.state_dict().items()):
        assert_close(a, b.cpu(), rtol=1e-7, atol=1e-9, msg=lambda found, n=n: f"{n}: {found}")


@pytest.mark.gpu
def test_checkpoints_move_between_cuda_and_the_cpu(tmp_path):
    model = _trained("gated", "cuda", dtype=torch.float32)
    save_sae(model, tmp_path / "sae", make_axis("tokens", 8))
    on_cpu, _ = load_sae(tmp_path / "sae")
    back, _ = load_sae(tmp_path / "sae", device="cuda")
    for (n, a), (_, b), (_, c) in zip(model.state_dict().items(), on_cpu.state_dict().items(),
                                       back.state_dict().items()):
        assert b.device.type == "cpu" and c.device.type == "cuda"
        assert torch.equal(a.cpu(), b) and torch.equal(a, c), n
    held = _data(16)
    a, b = evaluate(on_cpu, held, make_axis("tokens", 8)), evaluate(back, held, make_axis("tokens", 8))
    assert a["fvu"] == pytest.approx(b["fvu"], rel=1e-4) and a["l0"] == pytest.approx(b["l0"], rel=1e-3)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["topk", "gated"])
def test_bfloat16_autocast_trains_on_cuda(name):
    fp32 = _trained(name, "cuda", dtype=torch.float32, steps=30)
    bf16 = _trained(name, "cuda", dtype=torch.float32, steps=30, autocast="bfloat16")
    held = _data(16).cuda()
    a, b = evaluate(fp32, held, make_axis("tokens", 8)), evaluate(bf16, held, make_axis("tokens", 8))
    assert 0 < b["fvu"] < 1 and abs(a["fvu"] - b["fvu"]) < 0.1


@pytest.mark.gpu
def test_the_cli_trains_and_evaluates_on_cuda(tmp_path):
    np.save(tmp_path / "a.npy", _data(80).numpy())
    base = [sys.executable, "-m", "ctxsae_core.cli"]
    run = subprocess.run([*base, "train", "--acts", str(tmp_path / "a.npy"), "--out", str(tmp_path / "o"),
                          "--arch", "contextual", "--k", "3", "--width", "64", "--tokens", "4000", "--device", "cuda",
                          "--no-progress"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    scores = [json.loads(subprocess.run([*base, "evaluate", "--sae", str(tmp_path / "o"), "--acts",
                                         str(tmp_path / "a.npy"), "--json", "--device", dev],
                                        capture_output=True, text=True).stdout) for dev in ("cpu", "cuda")]
    assert scores[0]["fvu"] == pytest.approx(scores[1]["fvu"], rel=1e-4)
