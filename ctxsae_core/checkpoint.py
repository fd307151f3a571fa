"""Saving and loading: an SAE is a folder with `config.json` + `model.safetensors` (and the
`axis.json` it was trained on); nothing is pickled. Every file is written to a temporary name
and renamed into place, so an interrupted write never leaves a half-written file. Per-position
SAEs also export to SAELens's `cfg.json` + `sae_weights.safetensors` layout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ctxsae_common.device import resolve_device
from ctxsae_core.axes import ContextAxis
from ctxsae_core.config import BatchTopK, JumpReLU, ReLU, SAEConfig, TopK, config_to_dict, sae_config_from_dict
from ctxsae_common.errors import InputError
from ctxsae_common.hub import hub_folder, is_hub_id
from ctxsae_common.files import load_tensors, read_json_object, save_tensors_atomic, write_json_atomic
from ctxsae_core.registry import ARCHITECTURES
from ctxsae_core.sae import BaseSAE

CONFIG_FILE, WEIGHTS_FILE, AXIS_FILE = "config.json", "model.safetensors", "axis.json"
FORMAT_VERSION = 1


# --- SAEs ---------------------------------------------------------------------------------------


def build_sae(config) -> BaseSAE:
    """A freshly initialised SAE of the architecture the config names."""
    return ARCHITECTURES[config.arch](config)


def save_sae(model: BaseSAE, folder: str | Path, axis: ContextAxis | None = None) -> Path:
    """Write `config.json`, `model.safetensors` (and `axis.json`) into `folder`."""
    folder = Path(folder)
    save_tensors_atomic(folder / WEIGHTS_FILE, dict(model.state_dict()), {"format_version": str(FORMAT_VERSION)})
    if axis is not None:
        write_json_atomic(folder / AXIS_FILE, axis.to_dict())
    write_json_atomic(folder / CONFIG_FILE, {**config_to_dict(model.config), "format_version": FORMAT_VERSION})
    return folder


def load_sae(folder: str | Path, device: str | torch.device | None = None) -> tuple[BaseSAE, ContextAxis | None]:
    """Inverse of `save_sae`: the model (in eval mode, on `device`, default the CPU) and the axis
    it was trained on, if saved. `folder` is a local folder or a Hugging Face hub id
    (`user/repo`, or `user/repo/sub/folder`; `ctxsae_common.hub`). Weights saved from any device
    load on any other."""
    if not Path(folder).is_dir() and is_hub_id(folder):
        folder = hub_folder(str(folder), "SAE")
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: no such SAE folder: pass --sae a folder written by 'ctxsae train' or a hub id "
                         "(user/repo or user/repo/sub/folder)")
    values = read_json_object(folder / CONFIG_FILE, "SAE config")
    version = values.pop("format_version", None)
    if version != FORMAT_VERSION:
        raise InputError(f"{folder / CONFIG_FILE}: format_version {version!r} is not {FORMAT_VERSION}, the only one "
                         "this version of ctxsae reads: save the SAE again with this version")
    model = build_sae(sae_config_from_dict(values, str(folder / CONFIG_FILE)))
    state = load_tensors(folder / WEIGHTS_FILE, "SAE weights")
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise InputError(f"{folder / WEIGHTS_FILE}: does not match config.json (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}): save the model again")
    for name, t in state.items():
        if t.shape != expected[name].shape:
            raise InputError(f"{folder / WEIGHTS_FILE}: {name} has shape {list(t.shape)}, config.json implies "
                             f"{list(expected[name].shape)}")
        if t.is_floating_point() and not bool(t.isfinite().all()):
            raise InputError(f"{folder / WEIGHTS_FILE}: {name} holds NaN or Inf: the run diverged or the file is "
                             "damaged; train the SAE again")
    model.load_state_dict(state)
    axis_path = folder / AXIS_FILE
    axis = ContextAxis.from_dict(read_json_object(axis_path, "axis"), str(axis_path)) if axis_path.is_file() else None
    if device is not None:
        model = model.to(resolve_device(device))
    return model.eval(), axis


# --- SAELens export -----------------------------------------------------------------------------


def export_saelens(model: BaseSAE, folder: str | Path, hook_name: str | None = None) -> Path:
    """Write a per-position SAE as SAELens's `cfg.json` + `sae_weights.safetensors`.

    Our normalisation is folded into the weights so the export reads raw activations:
    W_enc' = s W_enc, b_dec' = b_dec / s, W_dec' = W_dec / s (pre-activations are unchanged,
    so TopK selections and thresholds carry over). BatchTopK exports as SAELens does, as a
    JumpReLU with its inference threshold."""
    act = model.config.activation
    if model.config.arch == "contextual":
        raise InputError("SAELens has no contextual SAE: export a per-position SAE (topk, batchtopk, relu, jumprelu)")
    s = float(model.act_scale)
    d_in, width = model.config.d_in, model.config.width
    weights = {
        "W_enc": (model.W_enc_FD.detach() * s).T,  # SAELens: (d_in, d_sae)
        "b_enc": model.b_enc_F.detach(),
        "W_dec": model.W_dec_FD.detach() / s,  # (d_sae, d_in)
        "b_dec": model.b_dec_D.detach() / s,
    }
    cfg: dict[str, Any] = {"d_in": d_in, "d_sae": width, "dtype": "float32", "device": "cpu",
                           "apply_b_dec_to_input": True, "normalize_activations": "none",
                           "reshape_activations": "none", "metadata": {"hook_name": hook_name}}
    if isinstance(act, BatchTopK):
        cfg["architecture"] = "jumprelu"
        weights["threshold"] = model.activation.threshold.detach().expand(width)
    elif isinstance(act, TopK):
        cfg.update(architecture="topk", k=act.k, rescale_acts_by_decoder_norm=False)
    elif isinstance(act, ReLU):
        cfg["architecture"] = "standard"
    elif isinstance(act, JumpReLU):
        cfg["architecture"] = "jumprelu"
        weights["threshold"] = model.activation.log_threshold.detach().exp()
    folder = Path(folder)
    save_tensors_atomic(folder / "sae_weights.safetensors", weights)
    write_json_atomic(folder / "cfg.json", cfg)
    return folder


SAELENS_ARCHITECTURES = ("standard", "topk", "jumprelu")


def import_saelens(folder: str | Path) -> BaseSAE:
    """A SAELens SAE (`cfg.json` + `sae_weights.safetensors`, a local folder or a hub id) as a
    per-position SAE of ours with the same reconstruction, so it can be scored with our metrics
    and controls. The inverse of `export_saelens`: weights are read in raw units (act_scale 1);
    without `apply_b_dec_to_input`, b_dec's share of the pre-activation is folded into b_enc."""
    if not Path(folder).is_dir() and is_hub_id(folder):
        folder = hub_folder(str(folder), "SAELens SAE")
    folder = Path(folder)
    if not (folder / "cfg.json").is_file():
        raise InputError(f"{folder}: no cfg.json, so not a SAELens SAE folder: pass the folder SAELens's "
                         "save_model wrote (cfg.json + sae_weights.safetensors)")
    cfg = read_json_object(folder / "cfg.json", "SAELens config")
    arch = cfg.get("architecture", "standard")
    if arch not in SAELENS_ARCHITECTURES:
        raise InputError(f"{folder / 'cfg.json'}: architecture {arch!r} is not one this tool reads: "
                         f"{', '.join(SAELENS_ARCHITECTURES)}")
    for key, plain in (("normalize_activations", "none"), ("reshape_activations", "none")):
        if cfg.get(key, plain) != plain:
            raise InputError(f"{folder / 'cfg.json'}: {key} {cfg[key]!r} is not supported: only SAEs that read raw "
                             f"activations ({key} 'none') import")
    if cfg.get("rescale_acts_by_decoder_norm"):
        raise InputError(f"{folder / 'cfg.json'}: rescale_acts_by_decoder_norm is not supported")
    w = {k: v.float() for k, v in load_tensors(folder / "sae_weights.safetensors", "SAELens weights").items()}
    missing = [k for k in ("W_enc", "b_enc", "W_dec", "b_dec", *(("threshold",) if arch == "jumprelu" else ()))
               if k not in w]
    if missing:
        raise InputError(f"{folder / 'sae_weights.safetensors'}: no {missing[0]} tensor for a {arch} SAE")
    d_in, width = w["W_enc"].shape
    if w["W_dec"].shape != (width, d_in) or w["b_enc"].shape != (width,) or w["b_dec"].shape != (d_in,):
        raise InputError(f"{folder / 'sae_weights.safetensors'}: shapes W_enc {list(w['W_enc'].shape)}, W_dec "
                         f"{list(w['W_dec'].shape)}, b_enc {list(w['b_enc'].shape)}, b_dec {list(w['b_dec'].shape)} "
                         "do not fit together")
    if not all(bool(t.isfinite().all()) for t in w.values()):
        raise InputError(f"{folder / 'sae_weights.safetensors'}: holds NaN or Inf")
    activation = {"standard": ReLU(), "topk": TopK(k=int(cfg.get("k", 0)) or width), "jumprelu": JumpReLU()}[arch]
    model = build_sae(SAEConfig(d_in=d_in, width=width, activation=activation))
    b_enc = w["b_enc"] if cfg.get("apply_b_dec_to_input", True) else w["b_enc"] + w["b_dec"] @ w["W_enc"]
    with torch.no_grad():
        model.W_enc_FD.copy_(w["W_enc"].T)
        model.b_enc_F.copy_(b_enc)
        model.W_dec_FD.copy_(w["W_dec"])
        model.b_dec_D.copy_(w["b_dec"])
        model.act_scale.fill_(1.0)
        if arch == "jumprelu":
            model.activation.log_threshold.copy_(w["threshold"].clamp_min(1e-12).log())
    return model.eval()
