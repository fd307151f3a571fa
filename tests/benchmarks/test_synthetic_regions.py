"""The synthetic benchmark's budget flag and its guards on reused points (`benchmarks/synthetic_regions.py`):
bad input exits 2 with one line before any training."""

import dataclasses
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import synthetic_regions as sr  # noqa: E402  (benchmarks/ is a folder of scripts, not a package)


def test_tokens_sets_every_familys_budget():
    assert {f.tokens for f in sr.families(False)} == {3_000_000}
    assert {f.tokens for f in sr.families(True)} == {40_000}
    assert {f.tokens for f in sr.families(False, 12_000_000)} == {12_000_000}
    assert [f.ks for f in sr.families(False, 12_000_000)] == [f.ks for f in sr.families(False)]


def _earlier_run(path: Path, tokens: int) -> Path:
    """A results.json with one kept point per family, trained for `tokens` positions."""
    families = {f.name: {"points": [{"family": f.name, "k": f.ks[0], "tokens": tokens, "fvu": 0.1, "l0": 4.0}]}
                for f in sr.families(False)}
    path.write_text(json.dumps({"setup": sr.setup_record(sr.Setup()), "families": families}))
    return path


@pytest.mark.parametrize("argv,message", [
    (["--tokens", "0"], "argument --tokens: 0 must be at least 1"),
    (["--rerun", "contextual gated"], "--rerun needs --reuse"),
    (["--rerun", "contextual gated", "--reuse", "missing.json"], "--reuse missing.json is not a file"),
    (["--rerun", "contextual gated", "--reuse", "{earlier}", "--tokens", "6000000"],
     "trained the kept families for other budgets (attention, shuffled control: 3,000,000; "),
])
def test_bad_input_exits_2_with_one_line_before_training(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    earlier = _earlier_run(tmp_path / "earlier.json", 3_000_000)
    with pytest.raises(SystemExit) as exit_:
        sr.main([a.replace("{earlier}", str(earlier)) for a in argv] + ["--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_kept_points_of_the_same_budget_are_reused(tmp_path):
    earlier = _earlier_run(tmp_path / "earlier.json", 6_000_000)
    args = SimpleNamespace(rerun=["contextual gated", "gated, shuffled control"], reuse=earlier)
    kept = sr._reused_points(args, sr.Setup(), sr.families(False, 6_000_000))
    assert sorted(p["family"] for p in kept) == ["attention, shuffled control", "contextual attention",
                                                 "per-position topk"]


@pytest.mark.parametrize("argv,message", [
    (["--lrs", "1e-3,fast"], "argument --lrs: learning rate 'fast': give positive numbers or default"),
    (["--lrs", "1e-3", "--rerun", "contextual gated", "--reuse", "{earlier}"], "--lrs sweeps every family's rate"),
    (["--carries", "gated", "--rerun", "contextual gated", "--reuse", "{earlier}"], "does not combine with --carries"),
    (["--carries", "ssm"], "argument --carries: invalid choice: 'ssm'"),
])
def test_bad_rate_sweep_input_exits_2_with_one_line_before_training(tmp_path, monkeypatch, capsys, argv, message):
    test_bad_input_exits_2_with_one_line_before_training(tmp_path, monkeypatch, capsys, argv, message)


def test_carries_keeps_per_position_topk_and_the_named_carry_with_its_control():
    assert [f.name for f in sr.families(False, carries=("gated",))] == [
        "per-position topk", "contextual gated", "gated, shuffled control"]
    swept = [f for f in sr.families(False) if f.name not in sr.CONTROL_OF]  # a control takes its carry's rate
    assert [(f.name, sr.headline_k(f)) for f in swept] == [
        ("per-position topk", 18), ("contextual gated", 6), ("contextual attention", 6)]
    assert [sr.headline_k(f) for f in sr.families(True) if f.name not in sr.CONTROL_OF] == [8, 4, 4]  # quick: first k


def _run(family: str, k: int, lr: float, fvu: float, converged: bool) -> dict:
    return {"family": family, "k": k, "lr": lr, "fvu": fvu, "l0": float(k), "state_l0": float(k),
            "converged": converged, "fvu_gain_last_quarter": 0.01 if converged else 0.05}


def test_each_family_keeps_its_lowest_converged_rate_and_a_control_its_carrys():
    fams = sr.families(False)
    swept = [_run("per-position topk", 18, 1e-3, 0.20, True), _run("per-position topk", 18, 3e-3, 0.15, False),
             _run("per-position topk", 18, 1e-2, 0.18, True),  # lower FVU at 3e-3, but not converged there
             _run("contextual gated", 6, 1e-3, 0.10, False), _run("contextual gated", 6, 3e-3, 0.09, False),
             {"family": "contextual attention", "k": 6, "lr": 1e-2, "diverged": "FVU 5.2 > 1"}]
    choices = sr.choose_rates(fams, swept)
    assert choices["per-position topk"]["lr"] == 1e-2 and choices["per-position topk"]["converged"]
    assert choices["contextual gated"]["lr"] == 3e-3 and not choices["contextual gated"]["converged"]
    assert choices["contextual attention"]["lr"] is None  # every run diverged: no rate, nothing more to train
    assert choices["gated, shuffled control"] == {"lr": 3e-3, "of": "contextual gated"}
    assert choices["attention, shuffled control"]["lr"] is None
    assert [r["lr"] for r in choices["per-position topk"]["runs"]] == [1e-3, 3e-3, 1e-2]


def test_the_rate_sweep_trains_the_rest_at_the_chosen_rates_without_repeating_a_point(monkeypatch):
    fams = sr.families(False, carries=("gated",))
    calls = []

    def fake_train_points(jobs, workers, label="", folder=None):  # the contextual SAE's FVU rises with the rate;
        calls.append(jobs)                          # only TopK's 1e-2 run converges
        return [_run(fam.name, k, fam.lr, fam.lr * 10 / k if fam.arch == "contextual" else 0.1 / k,
                     fam.arch == "topk" and fam.lr == 1e-2) for _, fam, k in jobs]

    monkeypatch.setattr(sr, "train_points", fake_train_points)
    points, rates = sr.sweep_rates(sr.Setup(), fams, [1e-3, None], workers=2)
    choices = rates["choices"]
    assert rates["swept"] == [1e-3, 1e-2]
    swept, rest = calls
    assert sorted((f.name, f.lr, k) for _, f, k in swept) == [
        ("contextual gated", 1e-3, 6), ("contextual gated", 1e-2, 6),  # None: the default rate, 1e-2 at width 512
        ("per-position topk", 1e-3, 18), ("per-position topk", 1e-2, 18)]
    assert [f.arch for _, f, _ in swept] == ["contextual"] * 2 + ["topk"] * 2  # the longest first
    assert choices["contextual gated"]["lr"] == 1e-3  # none converged: the lowest FVU (1e-3 here)
    assert choices["per-position topk"]["lr"] == 1e-2  # the only converged run
    assert sorted((f.name, f.lr, k) for _, f, k in rest) == [
        ("contextual gated", 1e-3, 4), ("contextual gated", 1e-3, 8),
        ("gated, shuffled control", 1e-3, 8), ("gated, shuffled control", 1e-3, 14),
        ("gated, shuffled control", 1e-3, 20),
        ("per-position topk", 1e-2, 14), ("per-position topk", 1e-2, 22), ("per-position topk", 1e-2, 26)]
    # every point of the comparison at its family's chosen rate, each k once
    assert sorted((p["family"], p["k"]) for p in points) == sorted((f.name, k) for f in fams for k in f.ks)
    assert all(p["lr"] == choices[p["family"]]["lr"] for p in points)


def test_kept_points_are_read_back_instead_of_trained(tmp_path, capsys):
    setup, fam = sr.Setup(), sr.families(True, carries=("gated",))[0]
    jobs = [(setup, dataclasses.replace(fam, lr=1e-3), k) for k in fam.ks]
    for job in jobs:  # an earlier run's points: nothing is left to train, so no process starts a training
        path = sr.point_file(tmp_path, *job)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"setup": sr.setup_record(setup), "point": _run(fam.name, job[2], 1e-3, 0.2, True)}))
    points = sr.train_points(jobs, workers=1, folder=tmp_path)
    assert sorted(p["k"] for p in points) == list(fam.ks)
    assert "0 trainings on 1 worker(s) (2 read back from" in capsys.readouterr().out
    assert sr.point_file(tmp_path, *jobs[0]) != sr.point_file(tmp_path, setup, dataclasses.replace(fam, lr=3e-3), 8)


def test_a_kept_point_of_another_setup_stops_the_run_before_training(tmp_path, capsys):
    setup, fam = sr.Setup(), sr.families(False)[0]
    path = sr.point_file(tmp_path / "out", setup, fam, 14)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"setup": {**sr.setup_record(setup), "width": 1024}, "point": {}}))
    with pytest.raises(SystemExit) as exit_:
        sr.main(["--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1
    assert f"{path} was trained under another setup" in err and "delete it, or pass another --out" in err


def test_a_trained_point_is_kept_and_a_second_run_reads_it_back(tmp_path, capsys):
    setup, fam = sr.Setup(), sr.families(True)[0]  # per-position TopK
    job = (setup, dataclasses.replace(fam, tokens=4 * 4096, lr=1e-3), 8)  # 4 steps
    first = sr.train_points([job], workers=1, folder=tmp_path)
    assert sr.point_file(tmp_path, *job).is_file() and "1 trainings on 1 worker(s)..." in capsys.readouterr().out
    again = sr.train_points([job], workers=1, folder=tmp_path)
    assert again == json.loads(json.dumps(first))  # saved, then loaded: equal
    assert "0 trainings on 1 worker(s) (1 read back" in capsys.readouterr().out


def test_a_damaged_kept_point_stops_the_run_in_one_line(tmp_path, capsys):
    path = sr.point_file(tmp_path / "out", sr.Setup(), sr.families(False)[0], 14)
    path.parent.mkdir(parents=True)
    path.write_text('{"setup": {"T": 6')  # cut off mid-write
    with pytest.raises(SystemExit) as exit_:
        sr.main(["--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1 and str(path) in err
