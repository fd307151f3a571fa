"""Several SAEs trained at once in worker processes end as they end trained one after another: the
same weights, learning curves and held-out scores; a worker's error reaches the caller; bad
--jobs values are named."""

import dataclasses
import multiprocessing
import os

import pytest
import torch

from ctxsae_common.errors import InputError
from ctxsae_core.axes import make_axis
from ctxsae_core.data import WindowBatches
from ctxsae_core.evaluate import evaluate
from ctxsae_core.pool import check_jobs, sweep_calls, train_ahead
from ctxsae_core.sweep import SweepConfig, sweep_specs, train_sae
from ctxsae_core.trainer import EVAL_FILE

T, D = 16, 8


def _windows(n: int, seed: int) -> torch.Tensor:
    """Windows with runs of a persistent direction plus noise, so the carry has something to keep."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(n, 1, D, generator=gen).expand(n, T, D)
    return base + 0.5 * torch.randn(n, T, D, generator=gen)


def _calls(root, lr=3e-3):
    """One `train_sae` call per SAE of a small sweep: TopK, the gated contextual SAE and its control."""
    sweep = SweepConfig(width=32, k=(2,), k_contextual=(2,), tokens=4096, batch_windows=8, lr=lr)
    batches = WindowBatches(_windows(64, 0), sweep.batch_windows, sweep.seed)
    return sweep_calls(sweep_specs(sweep, D), sweep, batches, make_axis("tokens", T), root, _windows(16, 1), "cpu",
                       False, checkpoint_every=8)


def _trained(calls):
    """Each call's SAE (trained, or resumed from its finished folder): weights, curve and held-out scores."""
    out = {}
    for call in calls:
        trained = train_sae(**call)
        scores = evaluate(trained.model, call["eval_windows"], call["axis"])
        out[call["out_dir"].name] = (trained.model.state_dict(), trained.trainer.summary(scores), scores)
    return out


def test_saes_trained_two_at_a_time_equal_those_trained_in_turn(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        alone = _trained(_calls(tmp_path / "alone"))
    finally:
        torch.set_num_threads(threads)
    calls = _calls(tmp_path / "pooled")
    train_ahead(calls, jobs=2, threads=1, progress=False)
    assert all((c["out_dir"] / EVAL_FILE).is_file() for c in calls)  # the workers trained every SAE
    pooled = _trained(calls)
    assert set(pooled) == {"topk_k2", "contextual_gated_k2", "contextual_gated_k2_control"}
    for name, (weights, summary, scores) in alone.items():
        other_weights, other_summary, other_scores = pooled[name]
        assert weights.keys() == other_weights.keys()
        for key, value in weights.items():
            assert torch.equal(value, other_weights[key]), (name, key)
        assert summary["curve"] == other_summary["curve"] and len(summary["curve"]) > 2
        assert summary["converged"] == other_summary["converged"]
        assert scores["fvu"] == other_scores["fvu"] and scores["l0"] == other_scores["l0"]


def test_a_finished_folder_is_not_trained_again(tmp_path):
    calls = _calls(tmp_path)
    train_sae(**calls[0])
    stamp = (calls[0]["out_dir"] / EVAL_FILE).stat().st_mtime_ns
    train_ahead(calls[:2], jobs=2, threads=1, progress=False)  # one left to train: the caller trains it
    assert (calls[0]["out_dir"] / EVAL_FILE).stat().st_mtime_ns == stamp
    assert not (calls[1]["out_dir"] / EVAL_FILE).exists()


def test_a_workers_error_reaches_the_caller(tmp_path):
    with pytest.raises(InputError, match="training diverged"):
        train_ahead(_calls(tmp_path, lr=1e12), jobs=2, threads=1, progress=False)


class _Dies:
    """Batches whose first read ends the worker process at once, as the kernel's out-of-memory killer would."""

    def __iter__(self):
        os._exit(3)


class _Breaks:
    """Batches whose first read raises an error that is not the user's (a bug, say)."""

    def __iter__(self):
        raise KeyError("no such shard")


@pytest.mark.parametrize("batches, message", [(_Dies(), r"died \(exit code 3\).*Pass a smaller --jobs"),
                                              (_Breaks(), r"(?s)in a worker process failed:\n.*KeyError: 'no such shard'")])
def test_a_worker_that_dies_or_breaks_stops_the_others(tmp_path, batches, message):
    """The contextual SAEs start first: the broken one and its control, which is given far too many
    steps to finish before the error arrives; TopK waits for a free worker."""
    topk, broken, control = _calls(tmp_path)
    endless = {**control, "train_cfg": dataclasses.replace(control["train_cfg"], tokens=10**9)}
    with pytest.raises(RuntimeError, match=message) as caught:
        train_ahead([{**broken, "batches": batches}, topk, endless], jobs=2, threads=1, progress=False)
    assert str(broken["out_dir"]) in str(caught.value)
    assert multiprocessing.active_children() == []  # the other worker was stopped, not left running
    assert not (control["out_dir"] / EVAL_FILE).exists()
    assert not topk["out_dir"].exists()  # and the one still waiting never started


def test_more_worker_threads_than_cores_are_warned_of(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("ctxsae_core.pool.available_cores", lambda: 1)
    calls = [{**call, "batches": _Dies()} for call in _calls(tmp_path)]
    with pytest.raises(RuntimeError, match="died"):
        train_ahead(calls, jobs=2, threads=1, progress=False)
    assert "warning: 2 workers on 1 thread each, 1 core(s): they share cores" in capsys.readouterr().err


def test_bad_jobs_are_named(tmp_path):
    with pytest.raises(InputError, match="--jobs 0 must be at least 1"):
        check_jobs(0)
    calls = _calls(tmp_path)
    with pytest.raises(ValueError, match="needs an out_dir"):
        train_ahead([{**calls[0], "out_dir": None}, calls[1]], jobs=2)
