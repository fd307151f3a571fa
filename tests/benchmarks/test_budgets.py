"""The budget benchmarks' figures (`benchmarks/budgets.py`): the share of the last quarter's gain made after the decay
starts, and the gain of each doubling of the budget."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import budgets as sb  # noqa: E402  (benchmarks/ is a folder of scripts, not a package)


def _point(tokens: int, fvus: list[float]) -> dict:
    """A run of `tokens` positions evaluated at equal steps (the last at the end)."""
    every = tokens // len(fvus)
    curve = [{"tokens": every * (i + 1), "fvu": f} for i, f in enumerate(fvus)]
    return {"tokens": tokens, "curve": curve, "fvu": fvus[-1], "l0": 6.0, "state_l0": 20.0, "converged": False,
            "fvu_gain_last_quarter": 0.2, "train_seconds": 1.0}


def test_a_run_level_at_its_full_rate_owes_its_last_quarter_to_the_decay():
    # 20 evaluations of 1000 positions: level at 0.10 from 10,000 to 16,000 (the decay starts at 80%),
    # then down to 0.07 at the end
    fvus = [0.5 - 0.04 * i for i in range(10)] + [0.10] * 6 + [0.0925, 0.085, 0.0775, 0.07]
    row = sb.budget_row(_point(20_000, fvus), decay_fraction=0.2)
    assert row["fvu_at_decay_start"] == pytest.approx(0.10)
    # the last quarter starts at 15,000 (FVU 0.10): all of its gain came after the decay started
    assert row["decay_share_of_last_quarter_gain"] == pytest.approx(1.0)
    still_learning = [0.5 - 0.02 * i for i in range(20)]  # a straight line: the decay's share is its length
    row = sb.budget_row(_point(20_000, still_learning), decay_fraction=0.2)
    assert row["decay_share_of_last_quarter_gain"] == pytest.approx(4 / 5)  # 16,000 -> 20,000 of 15,000 -> 20,000


def test_each_doubling_reports_the_final_fvu_it_gained():
    s = sb.summarise([_point(4000, [0.2, 0.1]), _point(2000, [0.3, 0.125])], decay_fraction=0.2)
    assert [r["tokens"] for r in s["budgets"]] == [2000, 4000]
    assert s["doublings"] == [{"from": 2000, "to": 4000, "fvu_gain": pytest.approx(0.2),
                               "curve_end_gain": pytest.approx(0.2)}]
    # a thresholded SAE's final FVU (at its saved threshold) is not its curve's last point (at its budget)
    small, large = _point(2000, [0.3, 0.125]), _point(4000, [0.2, 0.1])
    large["fvu"] = 0.13
    d = sb.summarise([small, large], decay_fraction=0.2)["doublings"][0]
    assert d["fvu_gain"] == pytest.approx(-0.04) and d["curve_end_gain"] == pytest.approx(0.2)
