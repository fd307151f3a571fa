"""Save-then-load equality for every architecture, clear errors for damaged folders, and the
SAELens export and import checked against SAELens's own forward formulas."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.testing import assert_close

from ctxsae_core import SAE, BatchTopK, ContextualConfig, ContextualSAE, JumpReLU, ReLU, SAEConfig, TopK, make_axis
from ctxsae_core.checkpoint import export_saelens, import_saelens, load_sae, save_sae
from ctxsae_common.errors import InputError

ACTS = [TopK(k=3), BatchTopK(k=3), ReLU(l1_coeff=0.1), JumpReLU(init_threshold=0.05)]


def _trained_like(model):
    """Perturb every parameter and buffer so that a save/load bug cannot hide behind defaults."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        model.act_scale.fill_(0.37)
        if hasattr(model.activation, "threshold"):
            model.activation.threshold.fill_(0.02)
            model.activation.threshold_seen.fill_(True)
    return model.eval()


@pytest.mark.parametrize("model", [
    *(SAE(SAEConfig(d_in=8, width=32, activation=a)) for a in ACTS),
    ContextualSAE(ContextualConfig(d_in=8, width=32, carry="gated", init_persistence=1.0)),
    ContextualSAE(ContextualConfig(d_in=8, width=32, carry="attention", activation=TopK(k=2), heads=2)),
    ContextualSAE(ContextualConfig(d_in=8, width=32, carry="gated", init_persistence=1.0, position_gates=True)),
], ids=["topk", "batchtopk", "relu", "jumprelu", "ctx-gated", "ctx-attention", "ctx-gated-position"])
def test_save_then_load_gives_the_same_model(tmp_path, model):
    model = _trained_like(model)
    axis = make_axis("quadtree", 16, (4, 4))
    save_sae(model, tmp_path / "sae", axis)
    loaded, loaded_axis = load_sae(tmp_path / "sae")
    assert loaded.config == model.config
    assert loaded_axis.to_dict() == axis.to_dict()
    for (n1, t1), (n2, t2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert n1 == n2 and torch.equal(t1, t2)
    x = torch.randn(3, 16, 8)
    with torch.no_grad():
        assert_close(loaded(x, axis).x_hat, model(x, axis).x_hat, rtol=0, atol=0)
    assert sorted(p.name for p in (tmp_path / "sae").iterdir()) == ["axis.json", "config.json", "model.safetensors"]


def test_damaged_folders_get_clear_errors(tmp_path):
    model = _trained_like(SAE(SAEConfig(d_in=8, width=32, activation=TopK(k=3))))
    save_sae(model, tmp_path / "sae")
    weights = tmp_path / "sae" / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated"):
        load_sae(tmp_path / "sae")
    save_sae(model, tmp_path / "sae")
    cfg = json.loads((tmp_path / "sae" / "config.json").read_text())
    (tmp_path / "sae" / "config.json").write_text(json.dumps({**cfg, "width": 64}))
    with pytest.raises(InputError, match="W_dec_FD has shape"):
        load_sae(tmp_path / "sae")
    (tmp_path / "sae" / "config.json").write_text(json.dumps({**cfg, "wdth": 64}))
    with pytest.raises(InputError, match="unknown field.*wdth"):
        load_sae(tmp_path / "sae")
    (tmp_path / "sae" / "config.json").write_text('{"arch": "topk", ')
    with pytest.raises(InputError, match="not valid JSON"):
        load_sae(tmp_path / "sae")
    with pytest.raises(InputError, match="no such SAE folder"):
        load_sae(tmp_path / "nowhere")


def _saelens_forward(folder, x):
    """SAELens 6's inference forward for the architectures we export (sae_lens/saes/*.py):
    standard: relu(pre); topk: top-k of pre, then relu; jumprelu: pre * (pre > threshold);
    pre = (x - b_dec) @ W_enc + b_enc, out = acts @ W_dec + b_dec."""
    cfg = json.loads((folder / "cfg.json").read_text())
    w = load_file(str(folder / "sae_weights.safetensors"))
    assert cfg["normalize_activations"] == "none" and cfg["apply_b_dec_to_input"]
    assert w["W_enc"].shape == (cfg["d_in"], cfg["d_sae"]) and w["W_dec"].shape == (cfg["d_sae"], cfg["d_in"])
    pre = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    if cfg["architecture"] == "standard":
        acts = pre.relu()
    elif cfg["architecture"] == "topk":
        vals, idx = pre.topk(cfg["k"], dim=-1)
        acts = torch.zeros_like(pre).scatter(-1, idx, vals.relu())
    else:
        acts = pre * (pre > w["threshold"])
    return acts @ w["W_dec"] + w["b_dec"]


def _exportable(act):
    """A per-position SAE initialised from off-centre data, every parameter perturbed, and the data."""
    model = SAE(SAEConfig(d_in=8, width=32, activation=act))
    x = torch.randn(4, 10, 8) * 5 + 2
    model.init_from_data_(x)
    model = _trained_like(model)
    model.act_scale.fill_(0.13)
    return model, x


@pytest.mark.parametrize("act", ACTS, ids=lambda a: a.kind)
def test_saelens_export_reproduces_our_reconstruction(tmp_path, act):
    model, x = _exportable(act)
    export_saelens(model, tmp_path / "lens", hook_name="blocks.3.hook_resid_post")
    with torch.no_grad():
        ours = model(x).x_hat
    assert_close(_saelens_forward(tmp_path / "lens", x), ours, rtol=1e-4, atol=1e-4)
    assert json.loads((tmp_path / "lens" / "cfg.json").read_text())["metadata"]["hook_name"] == "blocks.3.hook_resid_post"


def test_contextual_saes_do_not_export_to_saelens(tmp_path):
    with pytest.raises(InputError, match="no contextual SAE"):
        export_saelens(ContextualSAE(ContextualConfig(d_in=4, width=8)), tmp_path)


@pytest.mark.parametrize("act", ACTS, ids=lambda a: a.kind)
def test_saelens_import_inverts_the_export(tmp_path, act):
    model, x = _exportable(act)
    export_saelens(model, tmp_path / "lens")
    imported = import_saelens(tmp_path / "lens")
    assert imported.config.arch == {"topk": "topk", "relu": "relu"}.get(act.kind, "jumprelu")  # BatchTopK: SAELens's jumprelu
    with torch.no_grad():
        assert_close(imported(x).x_hat, model(x).x_hat, rtol=1e-4, atol=1e-4)
        assert_close(imported(x).x_hat, _saelens_forward(tmp_path / "lens", x), rtol=1e-5, atol=1e-5)


def test_saelens_import_folds_b_dec_when_it_is_not_subtracted(tmp_path):
    d, f = 6, 20
    w = {"W_enc": torch.randn(d, f), "b_enc": torch.randn(f), "W_dec": torch.randn(f, d), "b_dec": torch.randn(d)}
    save_file(w, str(tmp_path / "sae_weights.safetensors"))
    (tmp_path / "cfg.json").write_text(json.dumps({"architecture": "standard", "d_in": d, "d_sae": f,
                                                   "apply_b_dec_to_input": False}))
    x = torch.randn(7, 1, d)
    expected = (x @ w["W_enc"] + w["b_enc"]).relu() @ w["W_dec"] + w["b_dec"]  # SAELens: x is not centred
    with torch.no_grad():
        assert_close(import_saelens(tmp_path)(x).x_hat, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cfg,match", [
    ({"architecture": "gated"}, "architecture 'gated' is not one this tool reads"),
    ({"architecture": "standard", "normalize_activations": "expected_average_only_in"}, "normalize_activations"),
    ({"architecture": "jumprelu"}, "no threshold tensor for a jumprelu SAE"),
])
def test_saelens_import_refuses_what_it_cannot_reproduce(tmp_path, cfg, match):
    save_file({"W_enc": torch.randn(4, 8), "b_enc": torch.zeros(8), "W_dec": torch.randn(8, 4), "b_dec": torch.zeros(4)},
              str(tmp_path / "sae_weights.safetensors"))
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(InputError, match=match):
        import_saelens(tmp_path)
    with pytest.raises(InputError, match="no cfg.json, so not a SAELens SAE folder"):
        import_saelens(tmp_path / "elsewhere")
