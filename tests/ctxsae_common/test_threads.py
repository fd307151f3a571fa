"""--threads: the default leaves busy cores alone and shares the rest among torchrun's ranks."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from ctxsae_common import threads
from ctxsae_common.errors import InputError
from ctxsae_core.cli import main


@pytest.fixture
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _machine(monkeypatch, cores, load, local_world=None):
    monkeypatch.setattr(threads, "available_cores", lambda: cores)
    monkeypatch.setattr(threads, "busy_cores", lambda: load)
    if local_world is None:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local_world))


@pytest.mark.parametrize("cores,load,local_world,expected", [
    (8, 0.0, None, 8),    # idle machine: one thread per core
    (8, 2.6, None, 5),    # 2.6 cores busy: 8 - 3
    (2, 1.0, None, 1),    # one of two cores busy
    (2, 7.0, None, 1),    # overloaded: still one thread
    (16, 0.0, 4, 4),      # four ranks share 16 idle cores
    (16, 8.0, 4, 2),      # ... and the 8 idle ones under load
    (2, 0.0, 4, 1),       # more ranks than cores
])
def test_default_threads(monkeypatch, cores, load, local_world, expected):
    _machine(monkeypatch, cores, load, local_world)
    assert threads.default_threads() == expected


def test_busy_cores_sees_a_busy_loop():
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        assert threads.busy_cores(0.5) > 0.6  # the loop keeps about one core busy (more if others run)
    finally:
        spinner.kill()
        spinner.wait()


def test_available_cores_within_cgroup_quota(monkeypatch):
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(threads, "_cgroup_cores", lambda: 1.5)
    assert threads.available_cores() == 1
    monkeypatch.setattr(threads, "_cgroup_cores", lambda: None)
    assert threads.available_cores() == 4


def test_set_threads(monkeypatch, restore_threads):
    _machine(monkeypatch, 8, 6.2)
    assert threads.set_threads(1) == 1 and torch.get_num_threads() == 1
    assert threads.set_threads(None) == 2 and torch.get_num_threads() == 2
    with pytest.raises(InputError, match="--threads 0 must be at least 1"):
        threads.set_threads(0)


def test_cli_applies_threads(tmp_path, capsys, restore_threads):
    acts = tmp_path / "acts.npy"
    np.save(acts, np.random.default_rng(0).normal(size=(32, 8, 4)).astype(np.float32))
    torch.set_num_threads(2)
    code = main(["train", "--acts", str(acts), "--k", "2", "--tokens", "512", "--batch-tokens", "128", "--threads", "1", "--device", "cpu",
                 "--out", str(tmp_path / "sae"), "--no-progress"])
    assert code == 0 and torch.get_num_threads() == 1
    capsys.readouterr()
    code = main(["train", "--acts", str(acts), "--k", "2", "--threads", "0", "--out", str(tmp_path / "bad")])
    err = capsys.readouterr().err
    assert code == 2 and "--threads 0 must be at least 1" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()
