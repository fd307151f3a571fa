"""The time-to-quality benchmark's clock and verdicts (`benchmarks/time_to_quality.py`): the time a
curve first reaches a target, and convergence by the trainer's rule."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import time_to_quality as ttq  # noqa: E402  (benchmarks/ is a folder of scripts, not a package)


def _curve(fvus: list[float], every: int = 100) -> list[dict]:
    return [{"tokens": every * (i + 1), "seconds": 10.0 * (i + 1), "fvu": f} for i, f in enumerate(fvus)]


def test_time_to_interpolates_between_evaluations_and_skips_the_anneal():
    curve = _curve([0.8, 0.6, 0.4])  # 10 s, 20 s, 30 s
    assert ttq.time_to(curve, 0.5) == pytest.approx(25.0)  # halfway from 0.6 (20 s) to 0.4 (30 s)
    assert ttq.time_to(curve, 0.9) == 10.0  # already there at the first evaluation
    assert ttq.time_to(curve, 0.3) is None
    assert ttq.time_to(curve, 0.7, from_tokens=250) == 30.0  # the points before 250 tokens do not count


def test_compare_targets_the_worse_final_fvu():
    a = {"curve": _curve([0.8, 0.5]), "final_fvu": 0.5}
    b = {"curve": _curve([0.6, 0.4]), "final_fvu": 0.4}
    c = ttq.compare(a, b)
    assert c["target_fvu"] == 0.5
    assert c["seconds"] == [20.0, pytest.approx(15.0)]
    assert c["ratio"] == pytest.approx(20.0 / 15.0)


def _finished(fvus: list[float]) -> dict:
    """Curve.finish on a curve of held-out FVUs at 100, 200, ... tokens (the last is the end)."""
    curve = ttq.Curve(torch.zeros(1, 1, 1), lambda x: x, torch.device("cpu"), 100, 100)
    curve.points = [{"tokens": 100 * (i + 1), "seconds": 1.0, "fvu": f} for i, f in enumerate(fvus[:-1])]
    curve.tokens = 100 * len(fvus)
    curve.evaluate = lambda: curve.points.append({"tokens": curve.tokens, "seconds": 1.0, "fvu": fvus[-1]})
    return curve.finish()


def test_a_curve_that_rose_over_its_last_quarter_has_not_converged():
    risen = _finished([0.9, 0.5, 0.4, 0.5])  # 3/4 of 400 tokens is the evaluation at 300: 0.4 -> 0.5
    assert risen["gain_over_last_quarter"] == pytest.approx(-0.25)
    assert risen["converged"] is False
    flat = _finished([0.9, 0.5, 0.400, 0.396])  # 1% better over the last quarter
    assert flat["gain_over_last_quarter"] == pytest.approx(0.01)
    assert flat["converged"] is True
    improving = _finished([0.9, 0.5, 0.40, 0.38])  # 5% better
    assert improving["converged"] is False
