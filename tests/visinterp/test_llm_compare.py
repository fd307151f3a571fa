"""`visinterp llm-compare` on configs/llm/quick.toml with the real SmolLM2, and its metrics on hand cases."""

import json
from pathlib import Path

import pytest
import torch

from visinterp.cli import main
from visinterp.llm_compare import load_llm_config, localization, near_boundary

QUICK = Path(__file__).resolve().parents[2] / "configs" / "llm" / "quick.toml"
REQUIRED = ("arch", "carry", "l0", "state_l0", "fvu", "ce_clean", "ce_spliced", "ce_zero_ablation", "ce_recovered",
            "delta_ce", "dead_fraction", "best_auroc_by_region", "switch_rate_of_region_tracking_features",
            "innovations_near_boundary")


def test_near_boundary_marks_two_tokens_either_side():
    b = torch.zeros(1, 9, dtype=torch.bool)
    b[0, 4] = True
    assert near_boundary(b)[0].tolist() == [False, False, True, True, True, True, True, False, False]


def test_localization_on_a_hand_case():
    region = torch.tensor([[0] * 6 + [1] * 6])
    boundaries = torch.zeros_like(region, dtype=torch.bool)
    boundaries[0, 6] = True
    state = torch.zeros(1, 12, 2)
    state[0, 6:, 0] = 1.0  # feature 0 holds over region 1 without flicker
    state[0, ::2, 1] = 1.0  # feature 1 flickers everywhere
    innovations = torch.zeros(1, 12, 2)
    innovations[0, 6, 0] = 1.0  # paid once, at the boundary
    innovations[0, 0, 1] = 1.0
    out = localization(state, innovations, region, boundaries, ("prose", "code"), tracking_auroc=0.9)
    assert out["best_auroc_by_region"]["code"] == 1.0 and out["n_region_tracking_features"] == 1
    assert out["switch_rate_of_region_tracking_features"] == 0.0
    assert out["innovations_near_boundary"] == 0.5 and out["positions_near_boundary"] == pytest.approx(5 / 12)


def test_llm_compare_quick_writes_every_metric(tmp_path, capsys):
    out = tmp_path / "llm"
    assert main(["llm-compare", "--config", str(QUICK), "--out", str(out), "--no-progress"]) == 0
    result = json.loads((out / "comparison.json").read_text())
    cfg = load_llm_config(QUICK)
    names = set(result["saes"])
    assert {f"topk_k{k}" for k in cfg.sweep.k} | {f"contextual_gated_k{k}" for k in cfg.sweep.k_contextual} \
        | {f"contextual_gated_k{k}_control" for k in cfg.sweep.k_contextual} == names
    assert result["ce_zero_ablation"] > result["ce_clean"] + 3  # zeroing the residual stream wrecks the LM
    for name, m in result["saes"].items():
        assert all(key in m for key in REQUIRED)
        assert m["ce_recovered"] == pytest.approx((m["ce_zero_ablation"] - m["ce_spliced"]) / (m["ce_zero_ablation"] - m["ce_clean"]))
        assert m["delta_ce"] == pytest.approx(m["ce_spliced"] - m["ce_clean"])
        assert 0 < m["ce_recovered"] < 1 and 0 < m["fvu"] < 1
        assert 0 <= m["innovations_near_boundary"] <= 1 and set(m["best_auroc_by_region"]) == {"prose", "code", "licence"}
    assert result["saes"]["topk_k4"]["l0"] <= 4
    # windows with a massive activation after position 0 are left out of the store, and counted
    store_rows = json.loads((out / "store" / "manifest.json").read_text())["n_windows"]
    assert store_rows == result["windows_harvested"] - result["windows_left_out_as_outliers"] < result["windows_harvested"]
    from visinterp.store import ActivationStore

    acts = ActivationStore(out / "store").gather(torch.arange(store_rows))
    norms = acts.norm(dim=-1)
    assert norms.max() < cfg.outlier_norm * 3 * norms.median()
    # resumable: a second run reuses the harvested store and the trained SAEs, same numbers
    assert main(["llm-compare", "--config", str(QUICK), "--out", str(out), "--no-progress"]) == 0
    again = json.loads((out / "comparison.json").read_text())
    assert again["saes"]["contextual_gated_k2"]["fvu"] == result["saes"]["contextual_gated_k2"]["fvu"]


def test_llm_compare_bad_config_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('hook = "resid.99"\n[corpus]\nwindows = 6\nwindow = 8\n')
    assert main(["llm-compare", "--config", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "unknown hook 'resid.99'" in capsys.readouterr().err
    bad.write_text('[corpus]\nspan_tokens = [9, 3]\n')
    assert main(["llm-compare", "--config", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "span_tokens=[9, 3]" in capsys.readouterr().err
