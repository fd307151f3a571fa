"""The training loop. It takes batches of windows [batch, T, d] and never sees a model of
activations: Adam with warm-up and linear decay, unit-norm decoder rows, dead-feature tracking
for AuxK, periodic held-out evaluation, a JSONL metrics log, atomic checkpoints, and resume
(an interrupted run resumed with the same seed ends with the same weights)."""

from __future__ import annotations

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

from ctxsae_core.axes import ContextAxis
from ctxsae_common.errors import InputError
from ctxsae_common.files import load_tensors, read_json, save_tensors_atomic, write_json_atomic, write_text_atomic
from ctxsae_common.seeds import seeded_generator
from ctxsae_core.checkpoint import save_sae
from ctxsae_core.config import TrainConfig, config_to_dict
from ctxsae_core.data import Resumable, shuffle_positions
from ctxsae_core.evaluate import evaluate
from ctxsae_core.metrics import fvu, l0
from ctxsae_core.sae import BaseSAE

METRICS_FILE, EVAL_FILE, TRAIN_CONFIG_FILE = "metrics.jsonl", "eval.json", "train_config.json"
_RUN_FIELDS_THAT_MAY_CHANGE = {"progress", "eval_every", "checkpoint_every", "log_every"}


def default_lr(width: int) -> float:
    """OpenAI's learning rate for a dictionary of `width` features (Gao et al. 2024, sec. 2.3)."""
    return 2e-4 / math.sqrt(width / 2**14)  # Gao et al. 2024, sec. 2.3


class Trainer:
    """Train `model` on batches of windows walked along `axis`; write into `out_dir` if given."""

    def __init__(self, model: BaseSAE, cfg: TrainConfig, axis: ContextAxis | None,
                 out_dir: str | Path | None = None, eval_windows: Tensor | None = None,
                 eval_batch_windows: int = 64):
        self.model, self.cfg, self.axis = model, cfg, axis
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.eval_windows, self.eval_batch_windows = eval_windows, eval_batch_windows
        self.lr = cfg.lr or default_lr(model.config.width)
        self.optimizer = torch.optim.Adam(model.param_groups(self.lr), lr=self.lr)
        self.tokens_since_fired = torch.zeros(model.config.width, dtype=torch.long)
        self.step = 0
        self.total_steps: int | None = None
        self.batch_shape: list[int] | None = None  # [windows, T] of every batch, fixed by the first
        self.carry_warmup_fraction, self.k_anneal_fraction = cfg.schedule_for(model.has_carry)

    # --- schedule and bookkeeping -------------------------------------------------------------

    def lr_at(self, step: int) -> float:
        """The learning rate at `step`: linear warm-up, flat, then linear decay to zero."""
        steps = self.total_steps
        warmup, decay = round(self.cfg.warmup_fraction * steps), round(self.cfg.decay_fraction * steps)
        mult = 1.0
        if warmup and step < warmup:
            mult = (step + 1) / warmup
        if decay and step >= steps - decay:
            mult = min(mult, (steps - step) / decay)
        return self.lr * mult

    def budget_at(self, step: int, k: float) -> float:
        """The innovation budget at `step` when annealing k (see TrainConfig.k_anneal_fraction)."""
        span = round(self.k_anneal_fraction * self.total_steps)
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
        if self.out_dir is not None:
            with open(self.out_dir / METRICS_FILE, "a") as f:
                f.write(json.dumps(record) + "\n")

    # --- checkpoints --------------------------------------------------------------------------

    def _run_identity(self) -> dict[str, Any]:
        train = {k: v for k, v in self.cfg.to_dict().items() if k not in _RUN_FIELDS_THAT_MAY_CHANGE}
        return {"model": config_to_dict(self.model.config), "train": train,
                "axis": self.axis.to_dict() if self.axis else None}

    def save_checkpoint(self) -> Path:
        """Write a resumable checkpoint under out_dir/checkpoints and point LATEST at it."""
        root = self.out_dir / "checkpoints"
        final = root / f"step_{self.step:08d}"
        tmp = root / f".{final.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        save_sae(self.model, tmp, self.axis)
        opt = self.optimizer.state_dict()
        tensors = {"tokens_since_fired": self.tokens_since_fired}
        for idx, state in opt["state"].items():
            for name, value in state.items():
                tensors[f"opt.{idx}.{name}"] = torch.as_tensor(value)
        save_tensors_atomic(tmp / "trainer_state.safetensors", tensors)
        write_json_atomic(tmp / "trainer_state.json", {
            "step": self.step, "total_steps": self.total_steps, "batch_shape": self.batch_shape,
            "run": self._run_identity(), "param_groups": opt["param_groups"]})
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
        mine = self._run_identity()
        for key in ("model", "train", "axis"):
            if meta["run"][key] != mine[key]:
                diff = sorted(k for k in set(mine[key] or {}) | set(meta["run"][key] or {})
                              if (mine[key] or {}).get(k) != (meta["run"][key] or {}).get(k))
                raise InputError(f"{self.out_dir} holds a run with a different {key} config (differs in "
                                 f"{', '.join(diff)}): pass a new --out, or delete the folder to start over")
        state = load_tensors(path / "model.safetensors", "checkpoint weights")
        self.model.load_state_dict(state)
        tensors = load_tensors(path / "trainer_state.safetensors", "trainer state")
        self.tokens_since_fired = tensors.pop("tokens_since_fired")
        opt_state: dict[int, dict[str, Tensor]] = {}
        for key, value in tensors.items():
            _, idx, name = key.split(".", 2)
            opt_state.setdefault(int(idx), {})[name] = value
        self.optimizer.load_state_dict({"state": opt_state, "param_groups": meta["param_groups"]})
        self.step, self.total_steps, self.batch_shape = meta["step"], meta["total_steps"], meta.get("batch_shape")
        if (self.out_dir / METRICS_FILE).is_file():  # drop lines logged after the checkpoint
            lines = (self.out_dir / METRICS_FILE).read_text().splitlines()
            kept = [ln for ln in lines if ln and json.loads(ln).get("step", 0) <= self.step]
            write_text_atomic(self.out_dir / METRICS_FILE, "".join(ln + "\n" for ln in kept))

    # --- the loop -----------------------------------------------------------------------------

    def _train_step(self, x: Tensor) -> dict[str, Any]:
        model, n_positions = self.model, x.shape[0] * x.shape[1]
        if list(x.shape[:2]) != self.batch_shape:
            raise InputError(f"a batch of {x.shape[0]} windows x {x.shape[1]} positions, where this run trains on "
                             f"{self.batch_shape[0]} x {self.batch_shape[1]}: resume with the batch size it started "
                             "with, or pass a new --out")
        if self.cfg.shuffle_context:
            x, _ = shuffle_positions(x, seeded_generator(self.cfg.seed, "shuffle_train", self.step))
        lr = self.lr_at(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        self._set_schedule(self.step)
        out = model(x, self.axis)
        terms = model.loss(x, out, self.dead_mask(), self.axis)
        if not torch.isfinite(terms.total):
            raise InputError(f"training diverged at step {self.step} (loss is {terms.total.item()}): "
                             f"lower the learning rate (now {lr:.3g}) or check the activations' scale")
        self.optimizer.zero_grad(set_to_none=True)
        terms.total.backward()
        model.remove_parallel_grads_()
        self.optimizer.step()
        model.normalize_decoder_()
        model.update_statistics_(out, n_positions)
        with torch.no_grad():
            fired = out.fired()
            self.tokens_since_fired += n_positions
            self.tokens_since_fired[fired] = 0
        self.step += 1
        return {"out": out, "terms": terms, "x": x, "lr": lr, "n_positions": n_positions}

    def _evaluate(self) -> dict[str, Any]:
        return evaluate(self.model, self.eval_windows, self.axis, batch_windows=self.eval_batch_windows,
                        shuffle_context=self.cfg.shuffle_context, seed=self.cfg.seed)

    def fit(self, batches: Iterable[Tensor]) -> dict[str, Any]:
        """Train until the token budget is spent, resuming from out_dir's last checkpoint if
        there is one. Returns the final held-out metrics (or {} without held-out windows)."""
        self.model.train()
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.out_dir / TRAIN_CONFIG_FILE, self.cfg.to_dict())
        ckpt = self._latest_checkpoint()
        if ckpt is not None:
            self.load_checkpoint(ckpt)
        it = iter(batches.iter_from(self.step) if isinstance(batches, Resumable)
                  else itertools.islice(iter(batches), self.step, None))
        if ckpt is None:
            first = next(it)
            self.model.init_from_data_(first)
            if self.cfg.shrink_encoder_init:
                self.model.shrink_encoder_(first)
            self.total_steps = max(1, round(self.cfg.tokens / (first.shape[0] * first.shape[1])))
            self.batch_shape = list(first.shape[:2])
            self._set_schedule(0)
            self.model.prime_statistics_(first)  # at step 0's budget, so an annealed k starts where it should
            it = itertools.chain([first], it)
        self._loop(it)
        final = self._evaluate() if self.eval_windows is not None else {}
        if final:
            self._log({"step": self.step, "split": "eval", **final})
        if self.out_dir is not None:
            save_sae(self.model, self.out_dir, self.axis)
            write_json_atomic(self.out_dir / EVAL_FILE, {**final, "step": self.step})
        return final

    def _loop(self, it: Iterator[Tensor]) -> None:
        cfg, steps = self.cfg, self.total_steps
        bar = tqdm(total=steps, initial=self.step, desc=f"train {self.model.config.arch}", unit="step",
                   disable=not cfg.progress, dynamic_ncols=True)
        t0, tokens0 = time.perf_counter(), 0
        while self.step < steps:
            x = next(it)
            r = self._train_step(x)
            tokens0 += r["n_positions"]
            bar.update(1)
            last = self.step == steps
            if cfg.log_every and (self.step % cfg.log_every == 0 or last):
                with torch.no_grad():
                    out, terms = r["out"], r["terms"]
                    record = {"step": self.step, "split": "train", "tokens": self.step * r["n_positions"],
                              "lr": r["lr"], "loss": terms.total.item(), "mse": terms.mse.item(),
                              "sparsity_loss": terms.sparsity.item(), "aux_loss": terms.aux.item(),
                              "carry_loss": terms.carry.item(),
                              "fvu": fvu(r["x"], out.x_hat), "l0": l0(out.innovations, r["n_positions"]),
                              "state_l0": l0(out.state), "dead_fraction": float(self.dead_mask().float().mean()),
                              "tokens_per_s": tokens0 / (time.perf_counter() - t0)}
                self._log(record)
                bar.set_postfix(fvu=f"{record['fvu']:.3f}", l0=f"{record['l0']:.1f}",
                                state_l0=f"{record['state_l0']:.1f}", dead=f"{record['dead_fraction']:.0%}")
            if self.eval_windows is not None and cfg.eval_every and self.step % cfg.eval_every == 0 and not last:
                self._log({"step": self.step, "split": "eval", **self._evaluate()})
            if self.out_dir is not None and ((cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0) or last):
                self.save_checkpoint()
        bar.close()
        self._end_schedule()
