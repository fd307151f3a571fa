"""The converged comparisons' staging (`benchmarks/stages.py`): how an ablation splits each
stage between the plain run and the variant's."""

import dataclasses
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from ctxsae_common.errors import InputError

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


def test_a_diverged_variant_marks_the_stage_diverged_and_keeps_the_plain_runs_topk():
    plain, _ = _recording({"topk_k4": TOPK_ROW, "contextual_gated_k4": PLAIN_CONTEXTUAL})
    variant, _ = _recording({}, diverged="held-out FVU 1.3 > 1: diverged")
    found = stages.ablated(plain, variant, {"signed": True}, DEFAULTS)("lr0.01", True, k=(4,), k_contextual=(4,))
    assert found == {"saes": {"topk_k4": TOPK_ROW}, "meta": "lr0.01", "diverged": "held-out FVU 1.3 > 1: diverged"}
    plain, _ = _recording({}, diverged="loss NaN at step 9")  # the plain run diverged: nothing of it
    found = stages.ablated(plain, variant, {"signed": True}, DEFAULTS)("lr0.01", True, k=(4,), k_contextual=(4,))
    assert found == {"saes": {}, "diverged": "loss NaN at step 9"}


def test_the_rate_sweep_shows_topk_where_only_the_variants_contextual_sae_diverged():
    def plain(name, may_diverge=False, **sweep):
        fvu = {1e-3: 0.2, 1e-2: 0.25}[sweep["lr"]] if "lr" in sweep else 0.2
        return {"saes": {"topk_k4": _row("topk", "per-position", 4, 4.0, fvu)}}

    def variant(name, may_diverge=False, **sweep):
        if sweep.get("lr") == 1e-2:
            return {"saes": {}, "diverged": "diverged at step 5"}
        return {"saes": {"contextual_gated_k4": _row("contextual_gated", "contextual", 4, 4.0, 0.15, state_l0=9.0),
                         "contextual_gated_k4_control": _row("contextual_gated", "control", 4, 4.0, 0.3)}}

    stage = stages.ablated(plain, variant, {"signed": True}, SimpleNamespace(per_position=("topk",), k=(4,),
                                                                             carries=("gated",)))
    found = stages.converged_comparison(stage, (4,), (4,), 4, [1e-3, 1e-2], 1, stages.KEPT + ("delta_ce",))
    assert found["rate_sweep"]["topk"]["0.01"]["fvu"] == 0.25
    assert found["rate_sweep"]["contextual_gated"]["0.01"] == {"diverged": "diverged at step 5"}
    assert found["chosen"]["contextual_gated"]["lr"] == 1e-3


@dataclasses.dataclass(frozen=True)
class _Sweep:
    tokens: int = 4_000_000
    lr: float = 3e-3
    k: tuple = (4,)


@dataclasses.dataclass(frozen=True)
class _Config:
    model: str = "m"
    sweep: _Sweep = _Sweep()


def _stages(tmp_path, kept=None):
    trained = []

    def job(cfg, out):
        trained.append(cfg.sweep)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg)))
        if cfg.sweep.lr > 1:
            raise InputError("training diverged at step 3")
        (out / "result.json").write_text(json.dumps({"saes": {"topk_k4": {"lr": cfg.sweep.lr}}}))
    return stages.Stages(job, "result.json", (), tmp_path, record=dataclasses.asdict, kept=kept), trained


def test_config_differences_name_each_changed_field_and_skip_fields_the_old_run_lacked():
    stored = {"model": "m", "sweep": {"tokens": 4_000_000, "k": [2, 4]}}
    assert stages.config_differences(stored, {"model": "m", "sweep": {"tokens": 4_000_000, "k": (2, 4)}}) == []
    assert stages.config_differences(stored, {"model": "m", "sweep": {"tokens": 8_000_000, "k": (2, 4),
                                                                      "carry_coeff": 0.0}}) == [
        "sweep.tokens: 4000000 -> 8000000"]
    assert stages.config_differences(stored, {"model": "n", "sweep": {"k": (4,)}}) == ["model: m -> n",
                                                                                       "sweep.k: [2, 4] -> [4]"]


def test_a_stage_is_read_back_under_its_own_config_and_refused_under_another(tmp_path):
    run, trained = _stages(tmp_path)
    assert run("lr0.003", _Config())["saes"] == {"topk_k4": {"lr": 3e-3}}
    assert run("lr0.003", _Config())["saes"] == {"topk_k4": {"lr": 3e-3}} and len(trained) == 1  # read back
    assert run("lr0.01", _Config(), lr=1e-2)["saes"] == {"topk_k4": {"lr": 1e-2}} and len(trained) == 2
    with pytest.raises(InputError, match=r"lr0.003 holds a run of another config \(sweep.tokens: 4000000 -> "
                                         r"8000000\): pass another --runs, or delete the folder"):
        run("lr0.003", _Config(sweep=_Sweep(tokens=8_000_000)))
    with pytest.raises(InputError, match=r"sweep.lr: 0.003 -> 0.01"):
        run("lr0.003", _Config(), lr=1e-2)
    assert len(trained) == 2


def test_kept_stages_are_read_back_on_a_fresh_checkout_and_only_under_their_config(tmp_path):
    kept = tmp_path / "kept"
    run, trained = _stages(tmp_path / "runs", kept)
    assert run("hook/lr0.003", _Config())["saes"] == {"topk_k4": {"lr": 3e-3}}
    assert run("hook/lr10", _Config(), may_diverge=True, lr=10.0)["diverged"] == "training diverged at step 3"
    assert sorted(p.name for p in (kept / "hook" / "lr0.003").iterdir()) == ["config.json", "result.json"]
    assert sorted(p.name for p in (kept / "hook" / "lr10").iterdir()) == ["config.json", "diverged.json"]
    fresh, retrained = _stages(tmp_path / "fresh_runs", kept)  # an empty runs folder, as on a fresh checkout
    assert fresh("hook/lr0.003", _Config())["saes"] == {"topk_k4": {"lr": 3e-3}}
    assert fresh("hook/lr10", _Config(), may_diverge=True, lr=10.0)["diverged"] == "training diverged at step 3"
    assert retrained == [] and not (tmp_path / "fresh_runs").exists()
    with pytest.raises(InputError, match=r"kept/hook/lr0.003 holds a run of another config \(sweep.tokens"):
        fresh("hook/lr0.003", _Config(sweep=_Sweep(tokens=8_000_000)))
    assert fresh("hook/lr0.01", _Config(), lr=1e-2)["saes"] == {"topk_k4": {"lr": 1e-2}} and len(retrained) == 1
    assert (kept / "hook" / "lr0.01" / "result.json").is_file()  # what trains here is kept too


def _row(series, family, k, l0, fvu, state_l0=None):
    return {"series": series, "family": family, "k": k, "l0": l0, "state_l0": state_l0 or l0, "fvu": fvu,
            "delta_ce": 0.0, "converged": True, "fvu_gain_last_quarter": 0.0}


def test_the_seeds_innovation_ratio_reads_each_seeds_contextual_sae_against_seed_0s_topk_sweep():
    """TopK's sweep (seed 0) has L0 2 / 4 / 8 at FVU 0.4 / 0.2 / 0.1. The contextual SAE of seed 0
    pays 4 innovations for FVU 0.1, where TopK needs 8 (2x); seed 1's pays 4 for FVU 0.2 (1x)."""
    seeds = {0: (0.1, 4.0), 1: (0.2, 4.0)}

    def stage(name, may_diverge=False, **sweep):
        if name == "k_topk":
            return {"saes": {"topk_k2": _row("topk", "per-position", 2, 2.0, 0.4),
                             "topk_k8": _row("topk", "per-position", 8, 8.0, 0.1)}}
        fvu, l0 = seeds[sweep["seed"]]
        return {"saes": {"topk_k4": _row("topk", "per-position", 4, 4.0, 0.2),
                         "contextual_gated_k4": _row("contextual_gated", "contextual", 4, l0, fvu, state_l0=9.0),
                         "contextual_gated_k4_control": _row("contextual_gated", "control", 4, 4.0, 0.3)}}

    found = stages.converged_comparison(stage, (2, 4, 8), (4,), 4, [1e-3], 2, stages.KEPT + ("delta_ce",))
    ratio = found["seeds"]["innovation_ratio"]
    assert ratio["values"] == pytest.approx([2.0, 1.0])
    assert ratio["mean"] == pytest.approx(1.5) and ratio["std"] == pytest.approx(0.5 ** 0.5)
    assert found["goals"]["contextual_gated_k4"]["innovation_ratio"] == pytest.approx(2.0)  # seed 0's, as the goal
    assert found["seeds"]["contextual_minus_topk_fvu"]["values"] == pytest.approx([-0.1, 0.0])


def test_every_variant_changes_fields_the_sweep_has_and_reaches_its_contextual_saes():
    from ctxsae_core.sweep import SweepConfig, sweep_specs

    base = SweepConfig(k=(2,), k_contextual=(2,), carry_coeff=1.0)  # as no_carry_loss's plain run (the 4M config)
    plain = {s.name: s.config for s in sweep_specs(base, d=8)}
    for name, fields in stages.VARIANTS.items():
        changed = dataclasses.replace(base, **fields)  # a field the sweep lacks is a TypeError here
        assert changed != base, name
        if name == "cap":
            specs = {s.name: s.config for s in sweep_specs(changed, d=8)}
            assert specs["topk_k2"] == plain["topk_k2"]  # the per-position reference is the plain run's
            assert specs["contextual_gated_k2"].activation.max_per_position == 4.0
            assert specs["contextual_gated_k2_control"].activation.max_per_position == 4.0


def test_a_joined_variant_changes_the_fields_of_each_part_and_names_one_folder():
    fields = stages.variant_fields("no_anneal+carry_freeze")
    assert fields == {"k_anneal_fraction": 0.0, "carry_freeze_at_decay": True}
    assert stages.parse_variant("no_anneal+carry_freeze") == stages.parse_variant("carry_freeze+no_anneal") \
        == "carry_freeze+no_anneal"
    assert stages.parse_variant("signed") == "signed"


@pytest.mark.parametrize("name, says", [("bogus", "unknown variant 'bogus'"), ("signed+bogus", "unknown variant 'bogus'"),
                                        ("cap+cap", "sets max_per_position twice"), ("", "unknown variant ''")])
def test_a_variant_that_is_unknown_or_names_a_change_twice_is_refused_by_the_parser(name, says, capsys):
    import argparse

    p = argparse.ArgumentParser()
    stages.add_arguments(p, headline_k=4)
    with pytest.raises(SystemExit) as stop:
        p.parse_args(["--variant", name])
    assert stop.value.code == 2 and says in capsys.readouterr().err


def test_the_harvest_is_prepared_once_before_the_first_stage_that_trains_and_never_for_stages_read_back(tmp_path):
    kept = tmp_path / "kept"
    first, _ = _stages(tmp_path / "first", kept=kept)
    first("lr0.003", _Config())  # finished on another checkout: kept/lr0.003
    prepared, trained = [], []

    def prepare():
        prepared.append(True)
        (tmp_path / "harvest").mkdir()
        (tmp_path / "harvest" / "store").write_text("acts")

    def job(cfg, out):
        trained.append(out)
        assert (out / "store").read_text() == "acts"  # linked from the prepared harvest
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg)))
        (out / "result.json").write_text(json.dumps({"saes": {"topk_k4": {"lr": cfg.sweep.lr}}}))

    run = stages.Stages(job, "result.json", ("store",), tmp_path / "runs", tmp_path / "harvest",
                        record=dataclasses.asdict, kept=kept, prepare=prepare)
    assert run("lr0.003", _Config())["saes"] == {"topk_k4": {"lr": 3e-3}}
    assert prepared == [] and trained == []  # read back from kept: nothing to harvest
    run("lr0.01", _Config(), lr=1e-2)
    run("lr0.001", _Config(), lr=1e-3)
    assert prepared == [True] and trained == [tmp_path / "runs/lr0.01", tmp_path / "runs/lr0.001"]


def test_a_harvest_from_another_source_than_the_stages_read_back_is_refused_before_anything_trains(tmp_path):
    """An offline autoencoder trained again on another machine is another autoencoder: a stage
    harvested from it must not join the stages kept from the first."""
    kept = tmp_path / "kept"
    first, _ = _stages(tmp_path / "first", kept=kept)
    first("lr0.003", _Config())
    result = kept / "lr0.003" / "result.json"  # the kept stage's source, as its job recorded it
    result.write_text(json.dumps({**json.loads(result.read_text()), "autoencoder": {"psnr": 19.5}}))
    trained = []

    def runner(made: dict):
        def job(cfg, out):
            trained.append(out)
            out.mkdir(parents=True, exist_ok=True)
            (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg)))
            (out / "result.json").write_text(json.dumps({"saes": {}, "autoencoder": made}))
        return stages.Stages(job, "result.json", (), tmp_path / "runs", record=dataclasses.asdict, kept=kept,
                             prepare=lambda: made, source=lambda result: result["autoencoder"])

    run = runner({"psnr": 20.4})
    run("lr0.003", _Config())  # read back: nothing harvested yet, nothing to compare
    with pytest.raises(InputError, match=r"the harvest made for it: harvested from another source than stage "
                                         r"lr0.003 \(psnr: 19.5 -> 20.4\)"):
        run("lr0.01", _Config(), lr=1e-2)
    assert trained == []
    same = runner({"psnr": 19.5})
    same("lr0.003", _Config())
    assert same("lr0.01", _Config(), lr=1e-2)["autoencoder"] == {"psnr": 19.5} and len(trained) == 1
