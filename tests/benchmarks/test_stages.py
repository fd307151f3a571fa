"""The converged comparisons' staging (`benchmarks/stages.py`): how an ablation splits each
stage between the plain run and the variant's."""

import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import stages  # noqa: E402  (benchmarks/ is a folder of scripts, not a package)

DEFAULTS = SimpleNamespace(per_position=("topk",), k=(2, 4), carries=("gated",))
TOPK_ROW = {"family": "per-position", "fvu": 0.2}
PLAIN_CONTEXTUAL = {"family": "contextual", "fvu": 0.3}
SIGNED_CONTEXTUAL = {"family": "contextual", "fvu": 0.25}


def _recording(saes, diverged=None):
    calls = []

    def stage(name, may_diverge=False, **sweep):
        calls.append((name, may_diverge, sweep))
        return {"saes": {}, "diverged": diverged} if diverged else {"saes": dict(saes), "meta": name}
    return stage, calls


def test_an_ablated_stage_takes_topk_from_the_plain_run_and_the_contextual_saes_from_the_variant():
    plain, plain_calls = _recording({"topk_k4": TOPK_ROW, "contextual_gated_k4": PLAIN_CONTEXTUAL})
    variant, variant_calls = _recording({"contextual_gated_k4": SIGNED_CONTEXTUAL})
    stage = stages.ablated(plain, variant, {"signed": True}, DEFAULTS)
    found = stage("lr0.003", True, k=(4,), k_contextual=(4,), lr=0.003, seed=0)
    assert found["saes"] == {"topk_k4": TOPK_ROW, "contextual_gated_k4": SIGNED_CONTEXTUAL}
    assert found["meta"] == "lr0.003"
    assert plain_calls == [("lr0.003", True, {"k": (4,), "k_contextual": (4,), "lr": 0.003, "seed": 0})]
    assert variant_calls == [("lr0.003", True, {"k": (), "k_contextual": (4,), "lr": 0.003, "seed": 0,
                                                "per_position": (), "signed": True})]


def test_stages_of_one_family_call_one_arm_only():
    plain, plain_calls = _recording({"topk_k2": TOPK_ROW})
    variant, variant_calls = _recording({"contextual_gated_k2": SIGNED_CONTEXTUAL})
    stage = stages.ablated(plain, variant, {"signed": True}, DEFAULTS)
    assert stage("k_topk", per_position=("topk",), k=(2,), carries=(), lr=0.003)["saes"] == {"topk_k2": TOPK_ROW}
    assert stage("k_contextual", per_position=(), k=(), carries=("gated",), k_contextual=(2,))["saes"] == {
        "contextual_gated_k2": SIGNED_CONTEXTUAL}
    assert [c[0] for c in plain_calls] == ["k_topk"] and [c[0] for c in variant_calls] == ["k_contextual"]


def test_a_diverged_variant_makes_the_stage_diverged():
    plain, _ = _recording({"topk_k4": TOPK_ROW})
    variant, _ = _recording({}, diverged="held-out FVU 1.3 > 1: diverged")
    found = stages.ablated(plain, variant, {"signed": True}, DEFAULTS)("lr0.01", True, k=(4,), k_contextual=(4,))
    assert found == {"saes": {}, "diverged": "held-out FVU 1.3 > 1: diverged"}

