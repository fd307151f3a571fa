"""The training loop. It takes batches of windows [batch, T, d] and never sees a model of
activations: Adam with warm-up and linear decay, unit-norm decoder rows, dead-feature tracking
for AuxK, periodic held-out evaluation, a JSONL metrics log, atomic checkpoints, and resume
(an interrupted run resumed with the same seed ends with the same weights).

It runs on any device (batches are copied there from pinned memory without blocking) and
data-parallel across the ranks of `ctxsae_core.distributed`: each rank trains on its slice of
every global batch, gradients and batch statistics are reduced across ranks, and rank 0 alone
evaluates, logs, writes checkpoints and shows progress."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ctxsae_common.device import autocast, check_dtype, resolve_device
from ctxsae_common.errors import InputError
from ctxsae_common.files import load_tensors, read_json, save_tensors_atomic, write_json_atomic, write_text_atomic
from ctxsae_common.seeds import seeded_generator
from ctxsae_core.activations import cut_between
from ctxsae_core.axes import ContextAxis
from ctxsae_core.checkpoint import save_sae
from ctxsae_core.config import TrainConfig, config_to_dict
from ctxsae_core.data import Epochs, Resumable, shuffle_positions
from ctxsae_core.distributed import Group, group
from ctxsae_core.evaluate import evaluate, evaluate_walked, walked_batches
from ctxsae_core.metrics import fvu, l0
from ctxsae_core.sae import BaseSAE

METRICS_FILE, EVAL_FILE, TRAIN_CONFIG_FILE = "metrics.jsonl", "eval.json", "train_config.json"
_RUN_FIELDS_THAT_MAY_CHANGE = {"progress", "eval_every", "checkpoint_every", "log_every"}
CURVE_POINTS = 16  # held-out evaluations over a run when TrainConfig.eval_every is None
CONVERGED_GAIN = 0.02  # converged: held-out FVU improved by less than this fraction over the last quarter
CALIBRATION_BATCHES = 8  # training batches BatchTopK's inference threshold is set on at the end
CALIBRATION_ROUNDS = 3  # a contextual walk's innovations feed back into its prior: the threshold is set again


def curve_at(curve: list[dict], tokens: float) -> float:
    """A learning curve's held-out FVU at `tokens`, interpolated linearly between the evaluations
    around it (the first or last evaluation's value outside them)."""
    points = sorted((p["tokens"], p["fvu"]) for p in curve)
    for (t0, f0), (t1, f1) in zip(points, points[1:]):
        if t0 <= tokens <= t1:
            return f0 + (f1 - f0) * ((tokens - t0) / (t1 - t0) if t1 > t0 else 0.0)
    return points[0][1] if tokens < points[0][0] else points[-1][1]


def convergence(curve: list[dict], total_tokens: int, decay_fraction: float | None = None) -> dict[str, Any]:
    """Whether a run converged, from its learning curve [{"tokens", "fvu"}, ...] (held-out FVU
    at increasing token counts, the last at the end of training): converged when the FVU improved
    by less than CONVERGED_GAIN (2%) of its value over the last quarter of the tokens, the value
    at three quarters read from the curve (`curve_at`). A run whose FVU rose by CONVERGED_GAIN or
    more over that quarter has not converged either: it is unstable (typically a learning rate
    too high), and its end point is not its best.

    With the schedule's `decay_fraction`, also the share of a last-quarter gain made after the
    learning rate starts to decay: near 1, the run had levelled off at its full rate and the decay
    took out the rate's noise; well below it, the run was still learning at its full rate."""
    if len(curve) < 2:
        return {"converged": None, "fvu_gain_last_quarter": None,
                "convergence_note": "fewer than 2 held-out evaluations: convergence cannot be judged"}
    at, end = curve_at(curve, 0.75 * total_tokens), max(curve, key=lambda p: p["tokens"])["fvu"]
    gain = (at - end) / at if at > 0 else 0.0
    out = {"converged": bool(abs(gain) < CONVERGED_GAIN), "fvu_gain_last_quarter": gain}
    if decay_fraction:
        start = curve_at(curve, (1 - decay_fraction) * total_tokens)
        out["decay_share_of_last_quarter_gain"] = (start - end) / (at - end) if at > end else None
    return out


DEFAULT_LR_AT_16K = 2e-3  # chosen by benchmarks/recipe_sweep.py (docs/results.md)
MAX_DEFAULT_LR = 1e-2


def default_lr(width: int) -> float:
    """The default learning rate for a dictionary of `width` features: 2e-3 / sqrt(width / 2**14),
    at most 1e-2. The 1/sqrt(width) scaling is Gao et al. 2024's (sec. 2.3); their constant, 2e-4,
    was set for their normalisation and trains activations scaled to unit mean squared norm (as
    here) about ten times too slowly. The cap keeps narrow dictionaries, and the contextual SAE
    (which diverges at 3e-2 where TopK still trains), away from instability."""
    return min(DEFAULT_LR_AT_16K / math.sqrt(width / 2**14), MAX_DEFAULT_LR)


def _field_defaults(config: Any) -> dict[str, Any]:
    """A config dataclass's fields that have a plain, JSON-ready default, by name, as in its JSON."""
    found = {}
    for f in dataclasses.fields(config):
        try:
            found[f.name] = json.loads(json.dumps(f.default))
        except TypeError:  # dataclasses.MISSING (no plain default), or a value JSON cannot hold
            pass
    return found


def _with_new_fields(theirs: dict[str, Any], mine: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's config (`theirs`) with the fields it lacks, fields added to the code after
    that run started, taken from this run (`mine`) where this run holds the field's default:
    the old run trained as that default does (a new field's default keeps the old behaviour).
    A field this run sets otherwise stays missing, so the two differ in it."""
    added = {k: v for k, v in mine.items() if k not in theirs and k in defaults and v == defaults[k]}
    return {**theirs, **added}


class Trainer:
    """Train `model` on batches of windows walked along `axis`; write into `out_dir` if given.
    The model moves to `device` (default: where its parameters are); `dtype` 'bfloat16'
    autocasts the forward pass on CUDA; `timed` records each step's wall time in
    `step_seconds` (for benchmarks: on CUDA it waits for the step to finish). With held-out
    windows it evaluates on them along the way (the learning curve, `curve`) and, unless
    `final_eval` is False (a job that evaluates the model itself), at the end."""

    def __init__(self, model: BaseSAE, cfg: TrainConfig, axis: ContextAxis | None,
                 out_dir: str | Path | None = None, eval_windows: Tensor | None = None,
                 eval_batch_windows: int = 64, device: str | torch.device | None = None, dtype: str = "float32",
                 timed: bool = False, final_eval: bool = True, data_identity: dict[str, Any] | None = None):
        self.device = resolve_device(device) if device is not None else next(model.parameters()).device
        self.dtype = check_dtype(dtype, self.device)
        self.model, self.cfg, self.axis, self.group = model.to(self.device), cfg, axis, group()
        self.final_eval = final_eval  # False: the caller evaluates the trained model itself (see `summary`)
        self.data_identity = data_identity  # what the run trains on (path, shape, a hash): a resume must match it
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.eval_windows, self.eval_batch_windows = eval_windows, eval_batch_windows
        self.lr = cfg.lr or default_lr(model.config.width)
        self.optimizer = torch.optim.Adam(model.param_groups(self.lr), lr=self.lr)
        self.tokens_since_fired = torch.zeros(model.config.width, dtype=torch.long, device=self.device)
        self.step = 0
        self.total_steps: int | None = None
        self.batch_shape: list[int] | None = None  # [windows, T] of every batch, fixed by the first
        self.timed = timed  # record each step's wall time (waiting for CUDA to finish it) in step_seconds
        self.step_seconds: list[float] = []
        self._clipped = torch.zeros((), dtype=torch.long, device=self.device)  # see clipped_steps
        self.curve: list[dict] = []  # the held-out learning curve: {"step", "tokens", "fvu"} per evaluation
        self.epoch_positions: int | None = None  # training positions in one pass over the data, when known
        self.carry_warmup_fraction, self.k_anneal_fraction = cfg.schedule_for(model.has_carry)

    # --- schedule and bookkeeping -------------------------------------------------------------

    def lr_at(self, step: int) -> float:
        """The learning rate at `step`: linear warm-up, flat, then linear decay to zero."""
        steps = self.total_steps
        warmup, decay = round(self.cfg.warmup_fraction * steps), steps - self.decay_start
        mult = 1.0
        if warmup and step < warmup:
            mult = (step + 1) / warmup
        if decay and step >= self.decay_start:
            mult = min(mult, (steps - step) / decay)
        return self.lr * mult

    @property
    def decay_start(self) -> int:
        """The step where the learning rate starts to decay (total_steps without a decay)."""
        return self.total_steps - round(self.cfg.decay_fraction * self.total_steps)

    @property
    def anneal_steps(self) -> int:
        """Steps over which the budget anneals down to k (0: trained at k throughout)."""
        return round(self.k_anneal_fraction * self.total_steps)

    @property
    def tokens_at_full_budget(self) -> int:
        """Training positions after which the model codes with its own k (before, an annealed
        budget codes more a position, so a held-out FVU then is not at the model's sparsity)."""
        return self.anneal_steps * self.positions_per_step

    def budget_at(self, step: int, k: float) -> float:
        """The innovation budget at `step` when annealing k (see TrainConfig.k_anneal_fraction)."""
        span = self.anneal_steps
        if span == 0 or step >= span:
            return k
        return k * (self.cfg.k_anneal_start + (1 - self.cfg.k_anneal_start) * step / span)

    def _set_schedule(self, step: int) -> None:
        """What the model lets the trainer set at `step`: the annealed innovation budget, and
        whether the carry is on (off during the carry warm-up)."""
        if self.model.budget is not None:
            self.model.set_budget_(self.budget_at(step, self.model.budget))
        self.model.set_carry_(step >= round(self.carry_warmup_fraction * self.total_steps))

    def _end_schedule(self) -> None:
        """The trained model codes with its configured budget, carry on."""
        if self.model.budget is not None:
            self.model.set_budget_(self.model.budget)
        self.model.set_carry_(True)

    def dead_mask(self) -> Tensor:
        """(F,) bool: features that have not fired for dead_tokens training positions."""
        dead_tokens = self.cfg.dead_tokens or min(10_000_000, max(1, self.cfg.tokens // 10))
        return self.tokens_since_fired >= dead_tokens

    def _log(self, record: dict[str, Any]) -> None:
        if self.out_dir is not None and self.group.is_main:
            with open(self.out_dir / METRICS_FILE, "a") as f:
                f.write(json.dumps(record) + "\n")

    # --- checkpoints --------------------------------------------------------------------------

    def _run_identity(self) -> dict[str, Any]:
        train = {k: v for k, v in self.cfg.to_dict().items() if k not in _RUN_FIELDS_THAT_MAY_CHANGE}
        return {"model": config_to_dict(self.model.config), "train": train,
                "axis": self.axis.to_dict() if self.axis else None, "data": self.data_identity}

    def save_checkpoint(self) -> Path:
        """Write a resumable checkpoint under out_dir/checkpoints and point LATEST at it."""
        root = self.out_dir / "checkpoints"
        final = root / f"step_{self.step:08d}"
        tmp = root / f".{final.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        save_sae(self.model, tmp, self.axis)
        opt = self.optimizer.state_dict()
        tensors = {"tokens_since_fired": self.tokens_since_fired, "clipped_steps": self._clipped}
        for idx, state in opt["state"].items():
            for name, value in state.items():
                tensors[f"opt.{idx}.{name}"] = torch.as_tensor(value)
        save_tensors_atomic(tmp / "trainer_state.safetensors", tensors)
        write_json_atomic(tmp / "trainer_state.json", {
            "step": self.step, "total_steps": self.total_steps, "batch_shape": self.batch_shape,
            "world": self.group.world, "run": self._run_identity(), "param_groups": opt["param_groups"]})
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        write_text_atomic(root / "LATEST", final.name + "\n")
        for old in root.glob("step_*"):
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
        return final

    def _latest_checkpoint(self) -> Path | None:
        if self.out_dir is None or not (self.out_dir / "checkpoints" / "LATEST").is_file():
            return None
        path = self.out_dir / "checkpoints" / (self.out_dir / "checkpoints" / "LATEST").read_text().strip()
        return path if path.is_dir() else None

    def load_checkpoint(self, path: Path) -> None:
        """Restore the model, optimiser and schedule from a checkpoint folder of this same run."""
        meta = read_json(path / "trainer_state.json", "trainer state")
        if meta.get("world", 1) != self.group.world:
            raise InputError(f"{self.out_dir} holds a run trained on {meta.get('world', 1)} rank(s), not "
                             f"{self.group.world}: resume with the same number of processes, or pass a new --out")
        mine = self._run_identity()
        defaults = {"model": _field_defaults(self.model.config), "train": _field_defaults(self.cfg)}
        for key in ("model", "train", "axis", "data"):
            theirs = meta["run"].get(key)
            if key in defaults and isinstance(theirs, dict):
                theirs = _with_new_fields(theirs, mine[key], defaults[key])
            if theirs != mine[key]:
                theirs = theirs or {}
                diff = sorted(k for k in set(mine[key] or {}) | set(theirs) if (mine[key] or {}).get(k) != theirs.get(k))
                raise InputError(f"{self.out_dir} holds a run with a different {key} config (differs in "
                                 f"{', '.join(diff)}): pass a new --out, or delete the folder to start over")
        state = load_tensors(path / "model.safetensors", "checkpoint weights")
        self.model.load_state_dict(state)
        tensors = load_tensors(path / "trainer_state.safetensors", "trainer state")
        self.tokens_since_fired = tensors.pop("tokens_since_fired").to(self.device)
        self._clipped = tensors.pop("clipped_steps").to(self.device)
        opt_state: dict[int, dict[str, Tensor]] = {}
        for key, value in tensors.items():
            _, idx, name = key.split(".", 2)
            opt_state.setdefault(int(idx), {})[name] = value
        self.optimizer.load_state_dict({"state": opt_state, "param_groups": meta["param_groups"]})
        self.step, self.total_steps, self.batch_shape = meta["step"], meta["total_steps"], meta.get("batch_shape")
        if (self.out_dir / METRICS_FILE).is_file():  # drop lines logged after the checkpoint
            lines = (self.out_dir / METRICS_FILE).read_text().splitlines()
            kept = [ln for ln in lines if ln and self._logged_before_checkpoint(json.loads(ln))]
            write_text_atomic(self.out_dir / METRICS_FILE, "".join(ln + "\n" for ln in kept))
            self.curve = [{k: r[k] for k in ("step", "tokens", "fvu")} for r in map(json.loads, kept)
                          if r.get("split") == "eval" and "tokens" in r]

    def _logged_before_checkpoint(self, record: dict[str, Any]) -> bool:
        """Whether a metrics line was logged before the checkpoint just loaded (at self.step): a
        step's lines come before its checkpoint, except the closing held-out point of a finished
        run, logged at its last step after the last checkpoint (no point is taken in the loop
        there), which the resumed run takes again."""
        step = record.get("step", 0)
        closing = record.get("split") == "eval" and step == self.step == self.total_steps
        return step <= self.step and not closing

    # --- the loop -----------------------------------------------------------------------------

    def _to_device(self, x: Tensor) -> Tensor:
        """A batch on the training device: pinned and copied without blocking on CUDA."""
        if x.device == self.device:
            return x
        if self.device.type == "cuda" and x.device.type == "cpu":
            return x.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device)

    def _train_step(self, x: Tensor) -> dict[str, Any]:
        model, world = self.model, self.group.world
        if list(x.shape[:2]) != self.batch_shape:
            raise InputError(f"a batch of {x.shape[0]} windows x {x.shape[1]} positions, where this run trains on "
                             f"{self.batch_shape[0]} x {self.batch_shape[1]}: resume with the batch size it started "
                             "with, or pass a new --out")
        x = self._to_device(x)
        n_positions = x.shape[0] * x.shape[1]
        if self.cfg.shuffle_context:  # the global batch's permutations, this rank's rows of them
            gen = seeded_generator(self.cfg.seed, "shuffle_train", self.step)
            x, _ = shuffle_positions(x, gen, self.group.rank_slice(x.shape[0] * world), x.shape[0] * world)
        lr = self.lr_at(self.step)
        carry_frozen = self.cfg.carry_freeze_at_decay and self.step >= self.decay_start
        for param_group in self.optimizer.param_groups:
            frozen = carry_frozen and param_group.get("carry", False)
            param_group["lr"] = 0.0 if frozen else lr * param_group["lr_scale"]
        self._set_schedule(self.step)
        with autocast(self.device, self.dtype):
            out = model(x, self.axis)
            terms = model.loss(x, out, self.dead_mask(), self.axis)
        finite = torch.isfinite(terms.total.detach()).to(torch.int32).reshape(1)
        if world > 1:
            finite = -self.group.max_(-finite)  # every rank stops if any diverged
        if not bool(finite.item()):
            raise InputError(f"training diverged at step {self.step} (loss is {terms.total.item()}): "
                             f"lower the learning rate (now {lr:.3g}) or check the activations' scale")
        self.optimizer.zero_grad(set_to_none=True)
        terms.total.backward()
        self.group.average_grads_([p for p in model.parameters() if p.requires_grad])
        model.remove_parallel_grads_()
        grad_norm = self._clip_grads()
        self.optimizer.step()
        model.normalize_decoder_()
        model.update_statistics_(out, n_positions)
        with torch.no_grad():
            fired = out.fired()
            if world > 1:
                fired = self.group.max_(fired.to(torch.int32)).bool()
            self.tokens_since_fired += n_positions * world
            self.tokens_since_fired[fired] = 0
        self.step += 1
        return {"out": out, "terms": terms, "x": x, "lr": lr, "n_positions": n_positions * world,
                "local_positions": n_positions, "grad_norm": grad_norm}

    def _clip_grads(self) -> Tensor:
        """The gradient's total norm, clipped to max_grad_norm (every rank holds the averaged
        gradient already, so every rank clips alike); clipped steps are counted."""
        params = [p for p in self.model.parameters() if p.grad is not None]
        limit = self.cfg.max_grad_norm or float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, limit)
        self._clipped += norm > limit  # a tensor: no wait for the device at every step
        return norm

    @property
    def clipped_steps(self) -> int:
        """Steps whose gradient norm was clipped to max_grad_norm (a resumed run counts from its start)."""
        return int(self._clipped)

    def _evaluate(self) -> dict[str, Any]:
        return evaluate(self.model, self.eval_windows, self.axis, batch_windows=self.eval_batch_windows,
                        shuffle_context=self.cfg.shuffle_context, seed=self.cfg.seed)

    @property
    def positions_per_step(self) -> int:
        """Training positions in one step, over every rank."""
        return self.batch_shape[0] * self.batch_shape[1] * self.group.world

    def eval_interval(self) -> int:
        """Steps between held-out evaluations (0: only at the end)."""
        if self.cfg.eval_every is None:
            return max(1, self.total_steps // CURVE_POINTS)
        return self.cfg.eval_every

    def _curve_point(self) -> dict[str, Any]:
        """A held-out evaluation now, added to the learning curve and the log, at the budget in
        use now: BatchTopK's threshold is set for it to the pooled cut-off of the held-out
        windows themselves (as the final calibration sets it on training batches, re-set for a
        contextual walk), and its running average is restored after. So every point of the
        curve, the closing one included, has L0 = the budget on the held-out windows, and the
        points differ only by what training changed (a threshold calibrated on training batches
        gave a contextual SAE's held-out L0 +-10% around its budget from point to point, and its
        FVU with it). One scalar is fitted there, to the budget, never to the reconstruction. A
        held-out FVU above 1 (worse than predicting the mean) in the last quarter of training
        stops the run: it has diverged, or never learned."""
        act = self.model.activation
        if not act.has_statistics:
            scores = self._evaluate()
        else:  # the held-out batches are walked once to set the threshold, then evaluated at it
            batches = list(walked_batches(self.eval_windows, self.eval_batch_windows, self.cfg.shuffle_context,
                                          self.cfg.seed, self.device))
            with act.threshold_restored():
                self._set_threshold(batches, over_ranks=False)
                scores = evaluate_walked(self.model, batches, self.axis, self.cfg.shuffle_context)
        point = {"step": self.step, "tokens": self.step * self.positions_per_step, "fvu": scores["fvu"]}
        self.curve.append(point)
        self._log({**point, "split": "eval", **scores})
        if self.step > 3 * self.total_steps // 4:
            self.stop_if_diverged(scores, f"at step {self.step} of {self.total_steps}")
        return scores

    def stop_if_diverged(self, scores: dict[str, Any], when: str) -> None:
        """A one-line InputError when `scores`' held-out FVU is above 1 (worse than predicting the
        mean) or not finite: the run diverged, or never learned, and its figures are no result."""
        if scores["fvu"] <= 1.0:
            return
        where = f" ({self.out_dir})" if self.out_dir is not None else ""
        raise InputError(f"held-out FVU {scores['fvu']:.3g} {when}{where} is worse than predicting the mean: "
                         f"training diverged; lower the learning rate ({self.lr_at(self.step - 1):.3g} at the last step) "
                         f"or check the activations")

    def summary(self, final: dict[str, Any] | None = None) -> dict[str, Any]:
        """Tokens, epochs and convergence of the run; `final` (held-out scores at the end, e.g.
        from a job's own evaluation) closes the learning curve where the trainer had no held-out
        windows to close it with. A `final` FVU above 1 stops with `stop_if_diverged`'s error:
        the learning curve is taken at a threshold set on the held-out windows, the saved model's
        own figures at the one calibrated on training batches, and a contextual SAE can diverge
        at the second alone."""
        if final is not None and "fvu" in final:
            self.stop_if_diverged(final, "of the saved SAE")
        tokens = self.step * self.positions_per_step
        curve = list(self.curve)
        if final is not None and "fvu" in final and (not curve or curve[-1]["step"] != self.step):
            curve.append({"step": self.step, "tokens": tokens, "fvu": final["fvu"]})
        epochs = tokens / self.epoch_positions if self.epoch_positions else None
        return {"tokens": tokens, "epochs": epochs, "clipped_steps": self.clipped_steps,
                **convergence(curve, tokens, self.cfg.decay_fraction),
                "curve": curve}

    @torch.no_grad()
    def _calibrate_threshold(self, it: Iterator[Tensor]) -> None:
        """BatchTopK's inference threshold set on the trained model: the pooled cut-off of a few
        training batches together (k codes a position on average over all of them), so that
        inference pays k codes a position whatever the run's length (the running average it
        tracked in training lags far behind in short runs). A shuffled-context control walks
        them shuffled, as it trains and is evaluated."""
        if not self.model.activation.has_statistics:
            return
        batches = [self._to_device(x) for x in itertools.islice(it, CALIBRATION_BATCHES)]
        if not batches:  # a stream that ended with training: the running threshold stays
            return
        if self.cfg.shuffle_context:
            batches = [shuffle_positions(x, seeded_generator(self.cfg.seed, "shuffle_calibrate", i))[0]
                       for i, x in enumerate(batches)]
        self._set_threshold(batches)

    @torch.no_grad()
    def _set_threshold(self, batches: list[Tensor], over_ranks: bool = True) -> None:
        """Set the threshold to the pooled cut-off of `batches` (over every rank's, with
        `over_ranks`). A contextual walk's innovations change its prior, so its threshold is set
        again on the walk it gives."""
        was_training = self.model.training
        self.model.eval()
        for _ in range(CALIBRATION_ROUNDS if self.model.has_carry else 1):
            self.model.activation.set_threshold_(self._pooled_cutoff(batches, over_ranks))
        self.model.train(was_training)

    def _pooled_cutoff(self, batches: list[Tensor], over_ranks: bool = True) -> Tensor:
        """The k-codes-a-position cut-off of the pre-activations of all `batches` together
        (`cut_between`: budget x positions of them above it). Each batch has its own cut-off's
        worth of entries above it, so the pooled top ones lie at or above the lowest of those
        cut-offs, and only the entries there are kept to find it; when no more than the budget's
        are there, the next entry lies below, and every entry is searched."""
        act, positions = self.model.activation, sum(x.shape[0] * x.shape[1] for x in batches)
        pres = [self.model(x, self.axis).pre_acts for x in batches]
        lowest = min(float(act.cutoff(p, x.shape[0] * x.shape[1], over_ranks)) for p, x in zip(pres, batches))
        g = self.group if over_ranks else Group()
        n_keep = max(1, round(act.budget * positions * g.world))
        candidates = g.gather_cat(torch.cat([p[p >= lowest] for p in pres]))
        if candidates.numel() <= n_keep:  # the same count on every rank: every rank takes this branch
            candidates = g.gather_cat(torch.cat([p.reshape(-1) for p in pres]))
        return cut_between(candidates, n_keep).clamp_min(0)

    def _checkpoint(self) -> None:
        """Rank 0 writes the checkpoint; every rank waits for it."""
        if self.group.is_main:
            self.save_checkpoint()
        self.group.barrier()

    def fit(self, batches: Iterable[Tensor]) -> dict[str, Any]:
        """Train until the token budget is spent, resuming from out_dir's last checkpoint if
        there is one. Returns the final held-out metrics (or {} without held-out windows)."""
        self.model.train()
        if self.out_dir is not None and self.group.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.out_dir / TRAIN_CONFIG_FILE, self.cfg.to_dict())
        self.group.barrier()
        ckpt = self._latest_checkpoint()
        if ckpt is not None:
            self.load_checkpoint(ckpt)
        it = iter(batches.iter_from(self.step) if isinstance(batches, Resumable)
                  else itertools.islice(iter(batches), self.step, None))
        if isinstance(batches, Epochs):
            self.epoch_positions = batches.epoch_positions
        if ckpt is None:
            first = next(it)
            sample = self._to_device(first)
            self.model.init_from_data_(sample)
            if self.cfg.shrink_encoder_init:
                self.model.shrink_encoder_(sample)
            global_positions = first.shape[0] * first.shape[1] * self.group.world
            self.total_steps = max(1, round(self.cfg.tokens / global_positions))
            self.batch_shape = list(first.shape[:2])
            self._set_schedule(0)
            self.model.prime_statistics_(sample)  # at step 0's budget, so an annealed k starts where it should
            it = itertools.chain([first], it)
        self._loop(it)
        self._calibrate_threshold(it)
        final = {}
        thresholded = self.model.activation.has_statistics
        if self.eval_windows is not None and self.group.is_main and (self.final_eval or thresholded):
            # the curve's last point, at the budget on the held-out windows (without a threshold it is the
            # model's own evaluation, which a job that evaluates the model itself closes the curve with)
            closing = self._curve_point()
            if self.final_eval:  # the figures of the model as saved, its threshold calibrated on training batches
                final = self._evaluate() if thresholded else closing
                # summary(final) stops a diverged saved SAE, here before anything is saved
                final = {**final, **{k: v for k, v in self.summary(final).items() if k != "curve"}}
        if self.out_dir is not None and self.group.is_main:
            save_sae(self.model, self.out_dir, self.axis)
            write_json_atomic(self.out_dir / EVAL_FILE, {**final, "step": self.step})
        self.group.barrier()
        return final

    def _loop(self, it: Iterator[Tensor]) -> None:
        cfg, steps = self.cfg, self.total_steps
        n = torch.get_num_threads()
        where = f"{self.device}" + (f", {n} thread{'s' * (n != 1)}" if self.device.type == "cpu" else "")
        where += f" x {self.group.world} ranks" if self.group.world > 1 else ""
        bar = tqdm(total=steps, initial=self.step, desc=f"train {self.model.config.arch} ({where})", unit="step",
                   disable=not (cfg.progress and self.group.is_main), dynamic_ncols=True)
        t0, tokens0 = time.perf_counter(), 0
        while self.step < steps:
            x = next(it)
            start = time.perf_counter()
            r = self._train_step(x)
            if self.timed:
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                self.step_seconds.append(time.perf_counter() - start)
            tokens0 += r["n_positions"]
            bar.update(1)
            last = self.step == steps
            if cfg.log_every and self.group.is_main and (self.step % cfg.log_every == 0 or last):
                with torch.no_grad():
                    out, terms = r["out"], r["terms"]
                    record = {"step": self.step, "split": "train", "tokens": self.step * r["n_positions"],
                              "lr": r["lr"], "loss": terms.total.item(), "mse": terms.mse.item(),
                              "sparsity_loss": terms.sparsity.item(), "aux_loss": terms.aux.item(),
                              "carry_loss": terms.carry.item(), "grad_norm": float(r["grad_norm"]),
                              "fvu": fvu(r["x"], out.x_hat), "l0": l0(out.innovations, r["local_positions"]),
                              "state_l0": l0(out.state), "dead_fraction": float(self.dead_mask().float().mean()),
                              "tokens_per_s": tokens0 / (time.perf_counter() - t0)}
                self._log(record)
                bar.set_postfix(fvu=f"{record['fvu']:.3f}", l0=f"{record['l0']:.1f}",
                                state_l0=f"{record['state_l0']:.1f}", dead=f"{record['dead_fraction']:.0%}")
            every = self.eval_interval()
            if self.eval_windows is not None and self.group.is_main and every and self.step % every == 0 and not last:
                self._curve_point()
            if self.out_dir is not None and ((cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0) or last):
                self._checkpoint()
        bar.close()
        self._end_schedule()
