"""Hub ids: SAEs read from a local folder laid out as the hub cache lays it out (no network), one
quick failure with one line when the hub is offline, unreachable or lacks the folder, and push
wired to huggingface_hub with the sub-folder as the path in the repository."""

import numpy as np
import pytest
import torch
from huggingface_hub import HfApi, constants
from torch.testing import assert_close

from ctxsae_common import hub
from ctxsae_common.errors import InputError
from ctxsae_core import SAE, SAEConfig, TopK
from ctxsae_core.checkpoint import load_sae, save_sae
from ctxsae_core.cli import main

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.mark.parametrize("text,expected", [
    ("user/repo", True), ("user/repo/saes/resid15", True), ("User-1/my.repo_2", True),
    ("runs/ctx", True),  # reads as an id when no such folder exists here
    ("./runs/ctx", False), ("/abs/path", False), ("~/sae", False), ("single", False), ("a b/c", False),
])
def test_is_hub_id(text, expected):
    assert hub.is_hub_id(text) is expected


def test_an_existing_folder_is_never_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "ctx").mkdir(parents=True)
    assert not hub.is_hub_id("runs/ctx")
    assert hub.split_hub_id("user/repo/saes/a/") == ("user/repo", "saes/a")


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty hub cache, the hub offline unless a test says otherwise."""
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return tmp_path / "hub"


def _cached_repo(cache, repo_id):
    """The snapshot folder of `repo_id` in `cache`, laid out as huggingface_hub lays it out."""
    root = cache / f"models--{repo_id.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(COMMIT)
    return root / "snapshots" / COMMIT


def test_load_sae_from_a_hub_id_in_the_cache(hub_cache):
    model = SAE(SAEConfig(d_in=6, width=24, activation=TopK(k=3)))
    with torch.no_grad():
        model.W_enc_FD.add_(torch.randn_like(model.W_enc_FD))
    save_sae(model.eval(), _cached_repo(hub_cache, "someone/saes") / "layer3" / "topk")
    loaded, _ = load_sae("someone/saes/layer3/topk")
    x = torch.randn(5, 1, 6)
    with torch.no_grad():
        assert_close(loaded(x).x_hat, model(x).x_hat, rtol=0, atol=0)
    with pytest.raises(InputError, match="the repository has no folder 'layer9'"):
        load_sae("someone/saes/layer9")


def test_uncached_ids_fail_at_once_in_one_line(hub_cache, monkeypatch, tmp_path, capsys):
    with pytest.raises(InputError, match="not in the local Hugging Face cache and HF_HUB_OFFLINE is set") as e:
        load_sae("someone/elsewhere")
    assert "\n" not in str(e.value)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens: refused at once
    with pytest.raises(InputError, match=r"cannot reach http://127.0.0.1:9 \(Connect(ion)?Error\)"):
        load_sae("someone/elsewhere")
    acts = tmp_path / "acts.npy"
    np.save(acts, np.zeros((4, 6), np.float32))  # never read: the SAE fails first
    assert main(["evaluate", "--sae", "someone/elsewhere", "--acts", str(acts)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ctxsae evaluate: error: SAE 'someone/elsewhere': cannot reach") and err.count("\n") == 1


def test_push_uploads_the_folder_to_the_sub_folder(tmp_path, monkeypatch, capsys):
    save_sae(SAE(SAEConfig(d_in=4, width=8, activation=TopK(k=2))), tmp_path / "sae")
    calls = []
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create", repo_id, kw))
                        or f"https://huggingface.co/{repo_id}")
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kw: calls.append(("upload", kw)))
    assert main(["push", "--sae", str(tmp_path / "sae"), "--repo", "me/saes/layer3/topk", "--private"]) == 0
    assert calls[0] == ("create", "me/saes", {"private": True, "exist_ok": True})
    assert calls[1][1]["repo_id"] == "me/saes" and calls[1][1]["path_in_repo"] == "layer3/topk"
    assert calls[1][1]["folder_path"] == str(tmp_path / "sae")
    assert "uploaded" in capsys.readouterr().out
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert main(["push", "--sae", str(tmp_path / "sae"), "--repo", "me/saes"]) == 2
    assert "HF_HUB_OFFLINE is set" in capsys.readouterr().err
    assert main(["push", "--sae", str(tmp_path / "none"), "--repo", "me/saes"]) == 2  # checked before any upload
    assert "no such SAE folder" in capsys.readouterr().err and len(calls) == 2
