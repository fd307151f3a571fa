"""The trainer: resume equality, schedule, dead-feature tracking, logs and checkpoints."""

import json

import pytest
import torch

from ctxsae_core import SAE, BatchTopK, ContextualConfig, ContextualSAE, ReLU, SAEConfig, TopK, TrainConfig, make_axis
from ctxsae_core.checkpoint import CONFIG_FILE, WEIGHTS_FILE, load_sae
from ctxsae_core.data import WindowBatches
from ctxsae_common.errors import InputError
from ctxsae_common.files import load_tensors
from ctxsae_core.evaluate import evaluate
from ctxsae_core.trainer import EVAL_FILE, Trainer, default_lr

T, D = 8, 6


def _data(n=64):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, T, D, generator=g) * 2 + 1


def _contextual(seed=0):
    torch.manual_seed(seed)
    return ContextualSAE(ContextualConfig(d_in=D, width=16, activation=BatchTopK(k=2), carry="gated"))


class _Crash(Exception):
    pass


def _crashing(batches, after):
    for i, b in enumerate(batches):
        if i == after:
            raise _Crash
        yield b


@pytest.mark.parametrize("shuffle,max_grad_norm", [(False, 1.0), (True, 1.0), (False, 1e-3)])
def test_resumed_run_ends_with_the_same_weights(tmp_path, shuffle, max_grad_norm):
    """max_grad_norm 1e-3 clips every step: the resumed run counts the clipped steps from its start."""
    data, axis = _data(), make_axis("tokens", T)
    cfg = TrainConfig(tokens=20 * 4 * T, checkpoint_every=5, eval_every=0, max_grad_norm=max_grad_norm,
                      progress=False, shuffle_context=shuffle, seed=3)
    whole = _contextual()
    whole_trainer = Trainer(whole, cfg, axis, out_dir=tmp_path / "whole")
    whole_trainer.fit(WindowBatches(data, 4, seed=3))

    broken = _contextual()
    with pytest.raises(_Crash):  # dies during step 13, after the checkpoint at step 10
        Trainer(broken, cfg, axis, out_dir=tmp_path / "resumed").fit(
            _crashing(WindowBatches(data, 4, seed=3), after=12))
    assert (tmp_path / "resumed" / "checkpoints" / "LATEST").read_text().strip() == "step_00000010"
    resumed = _contextual(seed=99)  # different init: everything must come from the checkpoint
    resumed_trainer = Trainer(resumed, cfg, axis, out_dir=tmp_path / "resumed")
    resumed_trainer.fit(WindowBatches(data, 4, seed=3))
    for (name, a), (_, b) in zip(whole.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name
    assert resumed_trainer.clipped_steps == whole_trainer.clipped_steps == (20 if max_grad_norm < 1 else 0)
    logged = [json.loads(line)["step"] for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert logged == sorted(logged)  # lines logged after the checkpoint were dropped, not duplicated


def test_a_finished_run_fitted_again_keeps_one_closing_point(tmp_path):
    """The closing held-out point is logged after the last checkpoint: a second fit on the finished
    folder takes it again in its place (the same value), not beside the first."""
    data, axis = _data(), make_axis("tokens", T)
    cfg = TrainConfig(tokens=12 * 4 * T, checkpoint_every=5, eval_every=4, progress=False)
    first = Trainer(_contextual(), cfg, axis, out_dir=tmp_path, eval_windows=data[:8], final_eval=False)
    first.fit(WindowBatches(data, 4))
    again = Trainer(_contextual(seed=99), cfg, axis, out_dir=tmp_path, eval_windows=data[:8], final_eval=False)
    again.fit(WindowBatches(data, 4))
    assert [p["step"] for p in first.curve] == [4, 8, 12]
    assert again.curve == first.curve
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if r["split"] == "eval"] == [4, 8, 12]


def test_learning_rate_warms_up_and_decays():
    t = Trainer(SAE(SAEConfig(d_in=D, width=16, activation=TopK(k=2))),
                TrainConfig(tokens=100, lr=1.0, warmup_fraction=0.1, decay_fraction=0.2), None)
    t.total_steps = 100
    assert [t.lr_at(s) for s in (0, 4, 9, 10, 50, 79, 80, 90, 99)] == pytest.approx(
        [0.1, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.05])


def test_budget_anneals_to_k():
    t = Trainer(SAE(SAEConfig(d_in=D, width=16, activation=TopK(k=2))),
                TrainConfig(tokens=100, k_anneal_fraction=0.5, k_anneal_start=3.0), None)
    t.total_steps = 100
    assert [t.budget_at(s, 2) for s in (0, 25, 49, 50, 99)] == pytest.approx([6.0, 4.0, 2.08, 2.0, 2.0])
    t.batch_shape = (4, 8)  # 4 windows of 8 positions a step: k from step 50, i.e. position 1,600
    assert t.tokens_at_full_budget == 1600


def test_dead_features_are_those_silent_for_dead_tokens():
    model = SAE(SAEConfig(d_in=D, width=16, activation=TopK(k=2)))
    with torch.no_grad():
        model.b_enc_F[5:] = -100.0  # features 5.. never fire
    cfg = TrainConfig(tokens=6 * 4 * T, dead_tokens=3 * 4 * T, lr=1e-9, progress=False)
    t = Trainer(model, cfg, None)
    t.fit(WindowBatches(_data(), 4))
    dead = t.dead_mask()
    assert dead[5:].all()
    assert int(t.tokens_since_fired[5]) == 6 * 4 * T


def test_out_dir_holds_model_log_eval_and_one_checkpoint(tmp_path):
    data, axis = _data(), make_axis("tokens", T)
    cfg = TrainConfig(tokens=12 * 4 * T, eval_every=5, checkpoint_every=5, log_every=2, progress=False)
    result = Trainer(_contextual(), cfg, axis, out_dir=tmp_path, eval_windows=data[:8]).fit(WindowBatches(data, 4))
    assert set(result) >= {"fvu", "mse", "l0", "state_l0", "dead_fraction", "n_positions"}
    assert result["n_positions"] == 8 * T
    lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines if l["split"] == "eval"] == [5, 10, 12]
    assert [l["step"] for l in lines if l["split"] == "train"] == [2, 4, 6, 8, 10, 12]
    assert json.loads((tmp_path / "eval.json").read_text())["fvu"] == pytest.approx(result["fvu"])
    assert [p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith("step")] == ["step_00000012"]
    assert not list(tmp_path.rglob("*.tmp"))
    model, saved_axis = load_sae(tmp_path)
    assert saved_axis.kind == "tokens" and model.config.arch == "contextual"


def test_resuming_into_a_folder_of_another_run_is_refused(tmp_path):
    data, axis = _data(), make_axis("tokens", T)
    cfg = TrainConfig(tokens=4 * 4 * T, progress=False)
    Trainer(_contextual(), cfg, axis, out_dir=tmp_path).fit(WindowBatches(data, 4))
    other = ContextualSAE(ContextualConfig(d_in=D, width=16, activation=BatchTopK(k=3)))
    with pytest.raises(InputError, match="different model config.*activation"):
        Trainer(other, cfg, axis, out_dir=tmp_path).fit(WindowBatches(data, 4))


def _drop_from_checkpoint(folder, field):
    """Make the checkpoint in `folder` look written before TrainConfig had `field`."""
    meta = folder / "checkpoints" / (folder / "checkpoints" / "LATEST").read_text().strip() / "trainer_state.json"
    state = json.loads(meta.read_text())
    del state["run"]["train"][field]
    meta.write_text(json.dumps(state))


def test_a_run_checkpointed_before_a_config_field_existed_resumes_at_its_default(tmp_path):
    """A field added to TrainConfig after a run started is missing from its checkpoint: the run
    resumes where the field holds its default (the behaviour the run had), to the same weights
    as a run never interrupted, and is refused where the field is set otherwise."""
    data, axis = _data(), make_axis("tokens", T)
    cfg = TrainConfig(tokens=12 * 4 * T, checkpoint_every=5, eval_every=0, progress=False, seed=3)
    assert cfg.carry_freeze_at_decay is False
    whole = _contextual()
    Trainer(whole, cfg, axis, out_dir=tmp_path / "whole").fit(WindowBatches(data, 4, seed=3))
    with pytest.raises(_Crash):
        Trainer(_contextual(), cfg, axis, out_dir=tmp_path / "old").fit(_crashing(WindowBatches(data, 4, seed=3), 7))
    _drop_from_checkpoint(tmp_path / "old", "carry_freeze_at_decay")

    changed = TrainConfig(**{**cfg.__dict__, "carry_freeze_at_decay": True})
    with pytest.raises(InputError, match="different train config \\(differs in carry_freeze_at_decay\\)"):
        Trainer(_contextual(), changed, axis, out_dir=tmp_path / "old").fit(WindowBatches(data, 4, seed=3))
    resumed = _contextual(seed=99)
    Trainer(resumed, cfg, axis, out_dir=tmp_path / "old").fit(WindowBatches(data, 4, seed=3))
    for (name, a), (_, b) in zip(whole.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name


def test_training_reduces_the_loss():
    data, axis = _data(256), make_axis("tokens", T)
    model = _contextual()
    cfg = TrainConfig(tokens=150 * 16 * T, lr=3e-3, progress=False)
    t = Trainer(model, cfg, axis, eval_windows=data[:32])
    model.init_from_data_(data[:16])
    before = evaluate(model, data[:32], axis)["fvu"]
    after = t.fit(WindowBatches(data, 16))["fvu"]
    assert after < 0.6 * before


def test_contextual_saes_get_a_warm_up_and_an_annealed_budget_by_default():
    cfg = TrainConfig()
    assert cfg.schedule_for(contextual=True) == (0.25, 0.5)
    assert cfg.schedule_for(contextual=False) == (0.0, 0.0)
    assert TrainConfig(carry_warmup_fraction=0.0, k_anneal_fraction=0.1).schedule_for(True) == (0.0, 0.1)
    with pytest.raises(InputError, match="carry_warmup_fraction"):
        TrainConfig(carry_warmup_fraction=1.5)


@pytest.mark.parametrize("anneal", [0.0, 0.5])
def test_first_step_codes_at_the_budget_the_schedule_sets(tmp_path, anneal):
    """A contextual SAE's BatchTopK innovations are coded with the inference threshold from the
    first step on: the trainer primes it from the first batch at step 0's budget (k_anneal_start
    * k when annealing). Unprimed, the threshold is 0 and about half of all features fire."""
    torch.manual_seed(0)
    m = ContextualSAE(ContextualConfig(d_in=32, width=256, activation=BatchTopK(k=4), carry="gated"))
    data = torch.randn(64, T, 32)
    cfg = TrainConfig(tokens=64 * T * 10, progress=False, eval_every=0, log_every=1,
                      k_anneal_fraction=anneal, k_anneal_start=4.0)
    Trainer(m, cfg, make_axis("tokens", T), out_dir=tmp_path).fit(WindowBatches(data, 64, seed=0))
    first = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    budget = 4 * (4.0 if anneal else 1.0)
    assert first["step"] == 1 and first["l0"] == pytest.approx(budget, rel=0.2)


def test_resuming_with_another_batch_size_is_refused(tmp_path):
    data, axis = _data(), make_axis("tokens", T)
    cfg = TrainConfig(tokens=8 * 4 * T, checkpoint_every=2, progress=False)
    with pytest.raises(_Crash):
        Trainer(_contextual(), cfg, axis, out_dir=tmp_path).fit(_crashing(WindowBatches(data, 4), after=3))
    with pytest.raises(InputError, match="8 windows x 8 positions.*4 x 8"):
        Trainer(_contextual(), cfg, axis, out_dir=tmp_path).fit(WindowBatches(data, 8))


def test_the_trainer_sets_what_the_model_declares_and_restores_it():
    """Per-position TopK: a budget but no carry; contextual: both; ReLU: neither. After
    training every model codes at its configured k with the carry on."""
    assert SAE(SAEConfig(d_in=D, width=16, activation=TopK(k=3))).budget == 3
    relu = SAE(SAEConfig(d_in=D, width=16, activation=ReLU()))
    assert relu.budget is None and not relu.has_carry
    with pytest.raises(TypeError, match="no innovation budget"):
        relu.set_budget_(2)
    m = _contextual()
    cfg = TrainConfig(tokens=4 * 4 * T, progress=False, carry_warmup_fraction=1.0, k_anneal_fraction=1.0)
    t = Trainer(m, cfg, make_axis("tokens", T))
    t.total_steps = 4
    t._set_schedule(0)
    assert m.carry_scale == 0.0 and m.activation.budget == pytest.approx(4 * 2)
    t.fit(WindowBatches(_data(), 4))
    assert m.carry_scale == 1.0 and m.activation.budget == 2


def test_convergence_is_judged_on_the_last_quarter_of_the_tokens():
    from ctxsae_core.trainer import convergence

    # FVU at 3/4 of 100 tokens: between (50, 0.5) and (100, 0.3) -> 0.4; gain (0.4 - 0.3) / 0.4 = 25%
    curve = [{"tokens": 25, "fvu": 0.8}, {"tokens": 50, "fvu": 0.5}, {"tokens": 100, "fvu": 0.3}]
    c = convergence(curve, 100)
    assert c["fvu_gain_last_quarter"] == pytest.approx(0.25) and c["converged"] is False
    flat = [{"tokens": 50, "fvu": 0.30}, {"tokens": 75, "fvu": 0.30}, {"tokens": 100, "fvu": 0.295}]
    assert convergence(flat, 100)["converged"] is True  # 1.7% < 2%
    assert convergence(flat[-1:], 100)["converged"] is None  # one point: cannot be judged
    # rising: 0.05 at 3/4 (between (50, 0.04) and (100, 0.06)), 0.06 at the end: rose 20%, unstable
    rising = [{"tokens": 50, "fvu": 0.04}, {"tokens": 100, "fvu": 0.06}]
    c = convergence(rising, 100)
    assert c["fvu_gain_last_quarter"] == pytest.approx(-0.2) and c["converged"] is False


def test_the_curve_is_read_between_evaluations():
    from ctxsae_core.trainer import curve_at

    curve = [{"tokens": 200, "fvu": 0.3}, {"tokens": 100, "fvu": 0.5}]  # in any order
    assert curve_at(curve, 150) == pytest.approx(0.4) and curve_at(curve, 175) == pytest.approx(0.35)
    assert curve_at(curve, 50) == 0.5 and curve_at(curve, 300) == 0.3


def test_convergence_says_how_much_of_the_last_quarters_gain_came_after_the_decay_started():
    from ctxsae_core.trainer import convergence

    # level at 0.10 from 50 to 80 tokens, then down to 0.07 at 100 while the rate decays (from 80)
    curve = [{"tokens": 50, "fvu": 0.10}, {"tokens": 80, "fvu": 0.10}, {"tokens": 100, "fvu": 0.07}]
    c = convergence(curve, 100, decay_fraction=0.2)
    assert c["fvu_gain_last_quarter"] == pytest.approx(0.3) and c["decay_share_of_last_quarter_gain"] == pytest.approx(1)
    line = [{"tokens": 0, "fvu": 0.5}, {"tokens": 100, "fvu": 0.3}]  # still learning: the decay's share is its length
    assert convergence(line, 100, decay_fraction=0.2)["decay_share_of_last_quarter_gain"] == pytest.approx(0.8)
    assert convergence(line, 100, decay_fraction=0.1)["decay_share_of_last_quarter_gain"] == pytest.approx(0.4)
    assert "decay_share_of_last_quarter_gain" not in convergence(line, 100)  # no schedule given
    rising = [{"tokens": 50, "fvu": 0.04}, {"tokens": 100, "fvu": 0.06}]  # no gain to share
    assert convergence(rising, 100, decay_fraction=0.2)["decay_share_of_last_quarter_gain"] is None


def test_the_learning_curve_is_logged_and_eval_json_says_converged_and_epochs(tmp_path):
    data, axis = _data(), make_axis("tokens", T)
    cfg = TrainConfig(tokens=32 * 4 * T, progress=False, checkpoint_every=0)  # eval_every None: 16 points
    result = Trainer(_contextual(), cfg, axis, out_dir=tmp_path, eval_windows=data[:8]).fit(WindowBatches(data, 4))
    evals = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["split"] == "eval"]
    assert [e["step"] for e in evals] == list(range(2, 33, 2))  # every 32 // 16 steps, the last at the end
    assert [e["tokens"] for e in evals] == [e["step"] * 4 * T for e in evals]
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["epochs"] == pytest.approx(32 * 4 / 64) and saved["tokens"] == 32 * 4 * T
    assert isinstance(saved["converged"], bool) and saved["fvu"] == pytest.approx(result["fvu"])
    from ctxsae_core.trainer import convergence  # and how much of a last-quarter gain the decay made, by the same curve

    judged = convergence(evals, saved["tokens"], cfg.decay_fraction)
    assert saved["decay_share_of_last_quarter_gain"] == judged["decay_share_of_last_quarter_gain"]


def test_a_held_out_fvu_above_one_late_in_training_stops_the_run():
    data, axis = _data(), make_axis("tokens", T)
    model = SAE(SAEConfig(d_in=D, width=16, activation=TopK(k=2)))
    cfg = TrainConfig(tokens=16 * 4 * T, lr=50.0, progress=False, warmup_fraction=0.0, decay_fraction=0.0)
    with pytest.raises(InputError, match="worse than predicting the mean: training diverged; lower the learning rate"):
        Trainer(model, cfg, axis, eval_windows=data[:8]).fit(WindowBatches(data, 4))


def test_a_saved_sae_worse_than_the_mean_stops_the_run_before_it_is_saved(tmp_path, monkeypatch):
    """The learning curve's points are taken at a threshold set on the held-out windows; the
    saved SAE is evaluated at the one calibrated on training batches, and a contextual SAE can
    diverge at that one alone (an FVU of 5.5e41 on TAEF2's latent at k 2, its curve ending at
    0.38). Its own FVU is checked too, and nothing of the run is saved."""
    data, axis = _data(), make_axis("tokens", T)
    real_evaluate, finals = Trainer._evaluate, []

    def evaluate_saved(self):  # the curve's points of a thresholded SAE do not come through here
        finals.append(real_evaluate(self))
        return {**finals[-1], "fvu": 5.5e41}

    monkeypatch.setattr(Trainer, "_evaluate", evaluate_saved)
    cfg = TrainConfig(tokens=16 * 4 * T, progress=False, checkpoint_every=0)
    with pytest.raises(InputError, match=r"held-out FVU 5.5e\+41 of the saved SAE \(.*\) is worse than predicting "
                                         r"the mean: training diverged; lower the learning rate"):
        Trainer(_contextual(), cfg, axis, out_dir=tmp_path / "sae", eval_windows=data[:8]).fit(WindowBatches(data, 4))
    assert len(finals) == 1 and finals[0]["fvu"] < 1  # the one evaluation replaced was the saved SAE's
    written = {p.name for p in (tmp_path / "sae").iterdir()}
    assert "train_config.json" in written and not written & {CONFIG_FILE, WEIGHTS_FILE, EVAL_FILE}


@pytest.mark.parametrize("fvu", [1.02, float("nan"), float("inf")])
def test_a_jobs_own_final_fvu_above_one_or_not_finite_stops_its_summary(fvu):
    """Jobs evaluate the saved SAE themselves and hand the scores to `summary`."""
    data, axis = _data(), make_axis("tokens", T)
    trainer = Trainer(_contextual(), TrainConfig(tokens=4 * 4 * T, progress=False), axis, final_eval=False)
    trainer.fit(WindowBatches(data, 4))
    assert trainer.summary({"fvu": 0.98})["curve"][-1]["fvu"] == 0.98
    with pytest.raises(InputError, match="of the saved SAE is worse than predicting the mean"):
        trainer.summary({"fvu": fvu})


def test_batchtopk_codes_k_a_position_after_a_short_run():
    """The inference threshold is set on the trained model at the end, not left where a slow
    running average got to: held-out L0 lands near k whatever the run's length."""
    from ctxsae_core.synthetic import RegionsData, RegionsSpec

    spec = RegionsSpec(d=32, n_groups=4, values_per_group=4, n_local=32, local_per_position=3)
    data = RegionsData(spec, T=16, seed=0, batch_windows=16)
    held = data.windows(64, seed=1).x
    for arch, k in (("batchtopk", 8), ("contextual", 4)):
        torch.manual_seed(0)
        if arch == "batchtopk":
            model = SAE(SAEConfig(d_in=32, width=128, activation=BatchTopK(k=k)))
        else:
            model = ContextualSAE(ContextualConfig(d_in=32, width=128, activation=BatchTopK(k=k)))
        axis = make_axis("tokens", 16)
        Trainer(model, TrainConfig(tokens=30 * 16 * 16, lr=3e-3, progress=False), axis).fit(data)
        scores = evaluate(model, held, axis)
        assert scores["l0"] == pytest.approx(k, rel=0.15), arch


def test_batchtopk_learning_curve_follows_the_annealed_budget(tmp_path):
    """Held-out evaluations during training set the threshold to the held-out windows' pooled
    cut-off at the budget in use, so each point of the learning curve is at the L0 training had
    then (with the running average, momentum 0.99, the evaluations lagged far behind the anneal;
    with the mean of the last 8 cut-offs, 24.4 at step 8 for a budget of 13.4)."""
    from ctxsae_core.synthetic import RegionsData, RegionsSpec

    spec = RegionsSpec(d=32, n_groups=4, values_per_group=4, n_local=32, local_per_position=3)
    data = RegionsData(spec, T=16, seed=0, batch_windows=16)
    torch.manual_seed(0)
    model = SAE(SAEConfig(d_in=32, width=128, activation=BatchTopK(k=4)))
    cfg = TrainConfig(tokens=64 * 16 * 16, lr=3e-3, progress=False, k_anneal_fraction=0.5, eval_every=8)
    trainer = Trainer(model, cfg, make_axis("tokens", 16), out_dir=tmp_path, eval_windows=data.windows(64, seed=1).x)
    trainer.fit(data)
    evals = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evals = [e for e in evals if e["split"] == "eval" and 0 < e["step"] < trainer.total_steps]
    assert len(evals) >= 6
    for e in evals:
        assert e["l0"] == pytest.approx(trainer.budget_at(e["step"] - 1, 4), rel=0.01), e["step"]
    assert model.activation.threshold > 0  # the running average itself is left as it was


def test_a_contextual_learning_curve_is_at_its_budget_at_every_point_the_last_included(tmp_path):
    """A contextual SAE's held-out evaluations set its threshold to the held-out walk's pooled
    cut-off at the budget in use: every point of the curve is at that budget, the closing one
    included (with the last training batch's cut-off instead, held-out L0 ranged over +-15% of a
    contextual SAE's budget and its FVU with it, and the last point, calibrated on training
    batches, was not comparable to the ones before). The control walks shuffled windows, as it is
    evaluated."""
    from ctxsae_core.synthetic import RegionsData, RegionsSpec

    spec = RegionsSpec(d=32, n_groups=4, values_per_group=4, n_local=32, local_per_position=3)
    data = RegionsData(spec, T=16, seed=0, batch_windows=16)
    held = data.windows(64, seed=1).x
    for shuffle in (False, True):
        torch.manual_seed(0)
        model = ContextualSAE(ContextualConfig(d_in=32, width=128, activation=BatchTopK(k=3), carry="gated",
                                               init_persistence=0.0))  # carries once the warm-up ends
        cfg = TrainConfig(tokens=80 * 16 * 16, lr=3e-3, progress=False, k_anneal_fraction=0.5, eval_every=8,
                          shuffle_context=shuffle)
        out = tmp_path / f"shuffle{shuffle}"
        trainer = Trainer(model, cfg, make_axis("tokens", 16), out_dir=out, eval_windows=held)
        trainer.fit(data)
        evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        evals = [e for e in evals if e["split"] == "eval"]
        assert len(evals) >= 9 and evals[-1]["step"] == trainer.total_steps
        for e in evals:  # measured: within 0.2% (the last training batch's cut-off: up to 19% off)
            assert e["l0"] == pytest.approx(trainer.budget_at(e["step"] - 1, 3), rel=0.01), (shuffle, e["step"])
        # the model keeps the threshold calibrated on training batches: eval.json reports it there
        final = json.loads((out / "eval.json").read_text())
        assert final["l0"] == pytest.approx(3, rel=0.1) and final["l0"] != evals[-1]["l0"]


@pytest.mark.parametrize("n_batches", [1, 3])
def test_a_calibrated_threshold_has_exactly_the_budget_above_it(n_batches):
    """The threshold set on some batches (the end of training, a learning-curve point) lies
    midway between the budget's last entry and the next, found among a few entries only (with
    one batch, none are spared: every entry is searched): on those batches exactly the budget
    fires, and the cut-off is the one a sort of every entry gives."""
    torch.manual_seed(0)
    model = SAE(SAEConfig(d_in=16, width=64, activation=BatchTopK(k=3)))
    trainer = Trainer(model, TrainConfig(tokens=64, progress=False), make_axis("tokens", 8))
    batches = [torch.randn(4, 8, 16) for _ in range(n_batches)]
    trainer._set_threshold(batches)
    with torch.no_grad():
        pre = torch.cat([model(x, trainer.axis).pre_acts.flatten() for x in batches])
    n_keep = 3 * 4 * 8 * n_batches
    ordered = pre.sort(descending=True).values
    assert float(model.activation.threshold) == float((ordered[n_keep - 1] + ordered[n_keep]) / 2)
    assert int((pre > model.activation.threshold).sum()) == n_keep


def test_the_default_learning_rate_scales_as_one_over_sqrt_width_with_a_cap():
    assert default_lr(2**14) == pytest.approx(2e-3)
    assert default_lr(4096) == pytest.approx(4e-3)  # 1 / sqrt(width): a quarter of the width, twice the rate
    assert default_lr(4608) == pytest.approx(2e-3 / (4608 / 2**14) ** 0.5)
    assert default_lr(256) == default_lr(64) == 1e-2  # capped for narrow dictionaries
    model = SAE(SAEConfig(d_in=8, width=1024, activation=TopK(k=2)))
    assert Trainer(model, TrainConfig(tokens=64, progress=False), None).lr == pytest.approx(8e-3)
    assert Trainer(model, TrainConfig(tokens=64, lr=1e-4, progress=False), None).lr == 1e-4


@pytest.mark.parametrize("limit", [0.0, 1e-3])
def test_the_gradient_the_optimizer_steps_on_is_clipped_to_max_grad_norm(tmp_path, limit):
    """The logged grad_norm is the norm before clipping; Adam steps on a gradient of norm at most
    max_grad_norm (0: unclipped, the logged norm itself); clipped steps are counted."""
    data, axis = _data(), make_axis("tokens", T)
    cfg = TrainConfig(tokens=6 * 4 * T, max_grad_norm=limit, log_every=1, progress=False)
    trainer = Trainer(_contextual(), cfg, axis, out_dir=tmp_path)
    seen = []
    step = trainer.optimizer.step

    def recording_step(*args, **kwargs):
        grads = [p.grad for group in trainer.optimizer.param_groups for p in group["params"] if p.grad is not None]
        seen.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))
        return step(*args, **kwargs)

    trainer.optimizer.step = recording_step
    trainer.fit(WindowBatches(data, 4))
    logged = [r["grad_norm"] for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())
              if r["split"] == "train"]
    assert len(logged) == len(seen) == 6
    if limit:
        assert all(n > limit for n in logged)  # these norms are well above 1e-3
        assert seen == pytest.approx([limit] * 6, rel=1e-4)
        assert trainer.clipped_steps == 6 and trainer.summary()["clipped_steps"] == 6
    else:
        assert seen == pytest.approx(logged, rel=1e-5)
        assert trainer.clipped_steps == 0


def test_max_grad_norm_must_not_be_negative():
    with pytest.raises(InputError, match="max_grad_norm=-1.0 must be >= 0"):
        TrainConfig(max_grad_norm=-1.0)


@pytest.mark.parametrize("freeze", [False, True])
def test_the_carry_stops_training_where_the_rate_decays_only_when_frozen(tmp_path, freeze):
    """20 steps, the decay from step 16 on: with carry_freeze_at_decay the carry's parameters are
    those of the checkpoint at step 16 at the end, while the dictionary still moves; without, both move."""
    data, axis = _data(), make_axis("tokens", T)
    cfg = TrainConfig(tokens=20 * 4 * T, decay_fraction=0.2, carry_warmup_fraction=0.0, checkpoint_every=16,
                      eval_every=0, progress=False, carry_freeze_at_decay=freeze)
    trainer = Trainer(_contextual(), cfg, axis, out_dir=tmp_path)
    with pytest.raises(_Crash):  # dies fetching step 17's batch, after the checkpoint at step 16
        trainer.fit(_crashing(WindowBatches(data, 4, seed=0), after=17))
    assert trainer.decay_start == 16
    at_decay = load_tensors(tmp_path / "checkpoints" / "step_00000016" / WEIGHTS_FILE, "checkpoint")
    resumed = Trainer(_contextual(seed=5), cfg, axis, out_dir=tmp_path)
    resumed.fit(WindowBatches(data, 4, seed=0))
    model = resumed.model
    carry = {n for n, _ in model.named_parameters() if n.startswith("carry.")}
    assert carry >= {"carry.persistence", "carry.reset_in_raw", "carry.reset_out_raw"}
    moved = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), at_decay[n])}
    assert "W_dec_FD" in moved and "W_enc_FD" in moved
    assert (moved & carry == set()) == freeze
    carry_lr = next(g["lr"] for g in resumed.optimizer.param_groups if g.get("carry"))  # at the last step
    assert (carry_lr == 0.0) == freeze
