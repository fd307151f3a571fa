"""The image budget benchmark's stages (`benchmarks/image_budget.py`): at the config's budget it
reads the converged comparison's own stages back; a larger budget is a stage of its own."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import image_budget  # noqa: E402  (benchmarks/ is a folder of scripts, not a package)
import image_converged  # noqa: E402
import stages  # noqa: E402
from visinterp.image.config import load_run_config  # noqa: E402

KEPT = ROOT / "benchmarks/results/stages/taef2_converged_256_8m"


def test_budget_folders_name_the_budget_unless_it_is_the_configs():
    assert image_budget.budget_folder("latent", 8_000_000, 8_000_000) == "latent"
    assert image_budget.budget_folder("latent", 8_000_000, 8_000_000, "carry_freeze") == "latent-carry_freeze"
    assert image_budget.budget_folder("latent", 16_000_000, 8_000_000, "carry_freeze") == "latent-carry_freeze-16m"
    assert image_budget.budget_folder("encoder.mid", 12_500_000, 8_000_000) == "encoder.mid-12.5m"


def test_tokens_are_positive_counts():
    assert image_budget.parse_budgets("8e6,16000000") == [8_000_000, 16_000_000]
    for bad in ("8e6,0", "8M", "-1"):
        with pytest.raises(Exception, match="positive position counts"):
            image_budget.parse_budgets(bad)


def test_the_configs_budget_is_the_ablations_rate_stage_read_back(tmp_path):
    cfg = load_run_config(ROOT / "configs/image/taef2_converged_256_8m.toml")
    trained = []
    runner = stages.Stages(lambda c, out: trained.append(out), "metrics.json", image_converged.HARVEST, tmp_path,
                           record=lambda c: c.to_dict(), kept=KEPT)
    sweep = dict(k=(4,), k_contextual=(4,), lr=0.003, seed=0)
    stage = image_budget.budget_stage(runner, cfg, "latent", "carry_freeze", cfg.sweep.tokens)
    saes = stage("lr0.003", **sweep, tokens=cfg.sweep.tokens)["saes"]
    assert trained == []
    variant = json.loads((KEPT / "latent-carry_freeze/lr0.003/metrics.json").read_text())["saes"]
    plain = json.loads((KEPT / "latent/lr0.003/metrics.json").read_text())["saes"]
    assert saes["contextual_gated_k4"]["fvu"] == variant["latent/contextual_gated_k4"]["fvu"]
    assert saes["contextual_gated_k4_control"]["fvu"] == variant["latent/contextual_gated_k4_control"]["fvu"]
    assert saes["topk_k4"]["fvu"] == plain["latent/topk_k4"]["fvu"]  # TopK from the plain run
    assert saes["contextual_gated_k4"]["fvu"] != plain["latent/contextual_gated_k4"]["fvu"]

    # a budget of its own is a stage of its own (three times the config's: none is kept): the plain arm
    # trains first, in the plain folder with the budget appended (the fake job leaves no result, so the
    # stage stops there)
    larger = image_budget.budget_stage(runner, cfg, "latent", "carry_freeze", 3 * cfg.sweep.tokens)
    with pytest.raises(FileNotFoundError):
        larger("lr0.003", **sweep, tokens=3 * cfg.sweep.tokens)
    assert trained == [tmp_path / "latent-24m/lr0.003"]
    # twice it was trained and kept: read back
    doubled = image_budget.budget_stage(runner, cfg, "latent", "carry_freeze", 2 * cfg.sweep.tokens)
    saes = doubled("lr0.003", **sweep, tokens=2 * cfg.sweep.tokens)["saes"]
    kept = json.loads((KEPT / "latent-carry_freeze-16m/lr0.003/metrics.json").read_text())["saes"]
    assert saes["contextual_gated_k4"]["fvu"] == kept["latent/contextual_gated_k4"]["fvu"]
    assert saes["contextual_gated_k4"]["tokens"] == saes["topk_k4"]["tokens"] > 1.9 * cfg.sweep.tokens
    assert trained == [tmp_path / "latent-24m/lr0.003"]
