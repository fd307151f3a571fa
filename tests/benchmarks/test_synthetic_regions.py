"""The synthetic benchmark's budget flag and its guards on reused points (`benchmarks/synthetic_regions.py`):
bad input exits 2 with one line before any training."""

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
