"""Every LLM config the repository ships loads, and names a per-position TopK sweep that the
persistence ceiling can be read from."""

from pathlib import Path

import pytest

from visinterp.llm.config import load_llm_config

CONFIGS = sorted((Path(__file__).resolve().parents[3] / "configs" / "llm").glob("*.toml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_each_shipped_llm_config_loads(path):
    cfg = load_llm_config(path)
    assert cfg.hook.startswith(("resid.", "mlp.", "attn."))
    assert "topk" in cfg.sweep.per_position and cfg.sweep.k


def test_the_layer_baselines_differ_only_in_their_hook():
    cfgs = {p.stem: load_llm_config(p) for p in CONFIGS if p.stem.startswith("smollm2_baselines_")}
    assert sorted(c.hook for c in cfgs.values()) == ["resid.15", "resid.3", "resid.9"]
    first = next(iter(cfgs.values()))
    assert all(c.sweep == first.sweep and c.corpus == first.corpus for c in cfgs.values())
    assert first.sweep.carries == ()  # per-position TopK only


def test_the_converged_comparison_reads_the_resid15_baselines_harvest():
    """benchmarks/llm_converged.py reuses that harvest: same hook, same corpus, same held-out share."""
    converged = load_llm_config(CONFIGS[0].parent / "smollm2_converged_resid15.toml")
    baselines = load_llm_config(CONFIGS[0].parent / "smollm2_baselines_resid15.toml")
    assert converged.hook == baselines.hook and converged.corpus == baselines.corpus
    assert {"topk"} == set(converged.sweep.per_position) and converged.sweep.carries == ("gated",)
