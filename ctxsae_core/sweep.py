"""Training SAEs the way every job does: `train_sae` trains one (build, fit, save, evaluate on
held-out windows), and `sweep_specs` lists the SAEs a comparison trains (per-position SAEs over
budgets, contextual SAEs over budgets with their shuffled-context controls)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import Tensor

from ctxsae_common.typed import param, require
from ctxsae_core.axes import ContextAxis
from ctxsae_core.checkpoint import build_sae
from ctxsae_core.config import CARRY_KINDS, BatchTopK, ContextualConfig, JumpReLU, SAEConfig, TopK, TrainConfig
from ctxsae_core.sae import BaseSAE
from ctxsae_core.trainer import Trainer

PER_POSITION_KINDS = ("topk", "batchtopk")
SUBTRACT = ("none", "unigram")


@dataclass(frozen=True)
class SweepConfig:
    """The SAEs a comparison trains on one activation site: each per-position kind at each k,
    JumpReLU at each L0 coefficient, and for each carry the contextual SAE at each
    k_contextual with its shuffled-context control."""

    width: int = param(256, "features per SAE")
    per_position: tuple[str, ...] = param(("topk",), "per-position kinds swept over k: 'topk', 'batchtopk'")
    k: tuple[int, ...] = param((2, 4, 8, 16), "per-position budgets (active features per position)")
    jumprelu: tuple[float, ...] = param((), "JumpReLU L0-penalty coefficients, one per-position SAE each (its L0 "
                                        "is learned, not set); [] trains none")
    jumprelu_threshold: float = param(0.001, "JumpReLU's initial threshold (Rajamanoharan et al. 2024: 0.001); "
                                      "short runs barely move it, so there it largely sets L0")
    carries: tuple[str, ...] = param(("gated",), "contextual carries, each with its shuffled control: 'gated', "
                                     "'attention'")
    k_contextual: tuple[int, ...] = param((1, 2, 4, 8), "contextual BatchTopK innovation budgets")
    k_control: tuple[int, ...] = param((), "budgets of the shuffled-context controls; [] trains one control per "
                                       "contextual budget")
    init_persistence: float = param(
        ContextualConfig.init_persistence, "contextual SAEs' initial persistence logit (ContextualConfig): a carried "
        "feature needs a logit above 0 to survive the gate floor, and the carry's Adam steps move it about "
        "carry_lr_scale x lr a step, so short runs start nearer 0 to carry for most of training")
    signed: bool = param(False, "contextual SAEs code signed innovations (ContextualConfig.signed): a paid code may "
                         "lower or end a carried feature")
    position_gates: bool = param(False, "contextual SAEs' persistence also reads the step's position "
                                 "(ContextualConfig.position_gates; gated carry)")
    max_per_position: float | None = param(None, "contextual SAEs' innovations at one position are at most this "
                                           "many times the budget (BatchTopK.max_per_position); unset: no cap")
    carry_coeff: float = param(ContextualConfig.carry_coeff, "contextual SAEs' carry-loss weight (ContextualConfig): "
                               "0 trains the carry on the reconstruction alone")
    k_anneal_fraction: float | None = param(None, "TrainConfig.k_anneal_fraction of every SAE (unset: the trainer's "
                                             "default, 0.5 for contextual SAEs and 0 for per-position ones)")
    carry_freeze_at_decay: bool = param(False, "TrainConfig.carry_freeze_at_decay of every contextual SAE: its "
                                        "carry stops training where the learning rate starts to decay")
    tokens: int = param(300_000, "training positions per SAE")
    batch_windows: int = param(16, "windows per optimiser step")
    lr: float = param(3e-3, "Adam learning rate")
    shrink_encoder_init: bool = param(True, "scale the tied encoder down after the data-dependent init when it "
                                      "over-reconstructs (a no-op otherwise; needed when k is comparable to d, e.g. "
                                      "a 4-channel latent; see TrainConfig)")
    seed: int = param(0, "seed of every SAE")
    subtract: str = param("none", "what every SAE's input has subtracted: 'none', or 'unigram' (token windows "
                          "only): each activation minus its token's mean over the training windows, so the SAEs "
                          "code what the token alone does not give away; FVU is then reported on that residual "
                          "and on the raw activations (the SAE's output plus the table)")

    def __post_init__(self) -> None:
        for kind in self.per_position:
            require(kind in PER_POSITION_KINDS, f"sweep.per_position has {kind!r}: choose from "
                                                f"{list(PER_POSITION_KINDS)}")
        for carry in self.carries:
            require(carry in CARRY_KINDS, f"sweep.carries has {carry!r}: choose from {list(CARRY_KINDS)}")
        require(self.carry_coeff >= 0, f"sweep.carry_coeff={self.carry_coeff} must be >= 0")
        require(self.max_per_position is None or self.max_per_position >= 1,
                f"sweep.max_per_position={self.max_per_position} must be at least 1 (times the budget), or left out")
        require(self.k_anneal_fraction is None or 0 <= self.k_anneal_fraction <= 1,
                f"sweep.k_anneal_fraction={self.k_anneal_fraction} must lie in [0, 1] (or be left out)")
        require(not self.signed or set(self.carries) <= {"gated"},
                f"sweep.signed needs the gated carry only, but sweep.carries is {list(self.carries)}")
        require(not self.position_gates or set(self.carries) <= {"gated"},
                f"sweep.position_gates needs the gated carry only, but sweep.carries is {list(self.carries)}")
        require(len(set(self.carries)) == len(self.carries) and len(set(self.per_position)) == len(self.per_position),
                "sweep.carries and sweep.per_position must not repeat a name")
        require(all(k >= 1 for k in (*self.k, *self.k_contextual, *self.k_control)),
                "sweep.k, sweep.k_contextual and sweep.k_control must be >= 1")
        require(all(c > 0 for c in self.jumprelu), f"sweep.jumprelu={list(self.jumprelu)}: coefficients must be > 0")
        require(self.jumprelu_threshold > 0, f"sweep.jumprelu_threshold={self.jumprelu_threshold} must be > 0")
        require(self.width >= max((*self.k, *self.k_contextual, *self.k_control, 1)),
                f"sweep.width={self.width} must be >= every k")
        require(self.tokens >= 1 and self.batch_windows >= 1, "sweep.tokens and sweep.batch_windows must be >= 1")
        require(self.lr > 0, f"sweep.lr={self.lr} must be > 0")
        require(self.seed >= 0, f"sweep.seed={self.seed} must be >= 0")
        require(self.subtract in SUBTRACT, f"sweep.subtract={self.subtract!r}: choose from {list(SUBTRACT)}")


@dataclass(frozen=True)
class SAESpec:
    """One SAE of a sweep."""

    name: str  # e.g. "topk_k4", "jumprelu_c0.01", "contextual_gated_k2", "contextual_gated_k2_control"
    series: str  # its sweep: "topk", "jumprelu", "contextual_gated", "contextual_gated_control"
    family: str  # "per-position", "contextual", "control"
    k: int | None  # the budget; None for JumpReLU, whose L0 is learned
    config: SAEConfig
    shuffle: bool  # the shuffled-context control: positions permuted in training and evaluation

    @property
    def carry(self) -> str | None:
        """The carry of a contextual SAE; None per position."""
        return self.config.carry if isinstance(self.config, ContextualConfig) else None

    def describe(self) -> dict[str, Any]:
        """What a report row says of the spec."""
        return {"arch": self.config.arch, "series": self.series, "family": self.family, "k": self.k,
                "carry": self.carry}


def sweep_specs(sweep: SweepConfig, d: int) -> list[SAESpec]:
    """Every SAE of the sweep, per-position first, for activations of width d."""
    activations = {"topk": TopK, "batchtopk": BatchTopK}
    specs = [SAESpec(f"{kind}_k{k}", kind, "per-position", k,
                     SAEConfig(d_in=d, width=sweep.width, activation=activations[kind](k=k)), False)
             for kind in sweep.per_position for k in sweep.k]
    specs += [SAESpec(f"jumprelu_c{c:g}", "jumprelu", "per-position", None,
                      SAEConfig(d_in=d, width=sweep.width,
                                activation=JumpReLU(l0_coeff=c, init_threshold=sweep.jumprelu_threshold)), False)
              for c in sweep.jumprelu]
    for carry in sweep.carries:
        def contextual(k: int) -> ContextualConfig:
            return ContextualConfig(d_in=d, width=sweep.width,
                                    activation=BatchTopK(k=k, max_per_position=sweep.max_per_position), carry=carry,
                                    init_persistence=sweep.init_persistence, signed=sweep.signed,
                                    position_gates=sweep.position_gates, carry_coeff=sweep.carry_coeff)

        for k in sweep.k_contextual:
            specs.append(SAESpec(f"contextual_{carry}_k{k}", f"contextual_{carry}", "contextual", k, contextual(k),
                                 False))
            if not sweep.k_control:
                specs.append(SAESpec(f"contextual_{carry}_k{k}_control", f"contextual_{carry}_control", "control", k,
                                     contextual(k), True))
        for k in sweep.k_control:
            specs.append(SAESpec(f"contextual_{carry}_k{k}_control", f"contextual_{carry}_control", "control", k,
                                 contextual(k), True))
    return specs


def train_config(sweep: SweepConfig, spec: SAESpec, progress: bool = True, **overrides: Any) -> TrainConfig:
    """The training config of one SAE of the sweep (held-out evaluations along the way, for the
    learning curve, when the trainer is given held-out windows)."""
    values: dict[str, Any] = {"tokens": sweep.tokens, "lr": sweep.lr, "seed": sweep.seed,
                              "shuffle_context": spec.shuffle, "progress": progress,
                              "shrink_encoder_init": sweep.shrink_encoder_init,
                              "k_anneal_fraction": sweep.k_anneal_fraction,
                              "carry_freeze_at_decay": sweep.carry_freeze_at_decay}
    return TrainConfig(**{**values, **overrides})


@dataclass
class TrainedSAE:
    """`train_sae`'s result: the model, its held-out scores and the trainer (its learning curve,
    `trainer.summary(final)` for tokens, epochs and convergence)."""

    model: BaseSAE  # in eval mode
    scores: dict[str, Any]  # `ctxsae_core.evaluate` on the held-out windows, with convergence ({} without them)
    trainer: Trainer


def train_sae(config: SAEConfig, train_cfg: TrainConfig, batches: Iterable[Tensor], axis: ContextAxis | None,
              out_dir: str | Path | None = None, eval_windows: Tensor | None = None,
              eval_batch_windows: int = 64, device: str | torch.device = "auto", dtype: str = "float32",
              final_eval: bool = True, data_identity: dict[str, Any] | None = None) -> TrainedSAE:
    """Train one SAE: build it from `config` (seeded by train_cfg.seed), fit it on `batches` on
    `device` ('auto' picks CUDA when present), and, given `out_dir`, save it there with its
    metrics and checkpoints (resuming from the last checkpoint found there, which must have
    trained on the same `data_identity`); given held-out windows, evaluate it on them along the
    way (the learning curve) and, unless `final_eval` is False, at the end."""
    torch.manual_seed(train_cfg.seed)
    model = build_sae(config)
    trainer = Trainer(model, train_cfg, axis, out_dir=out_dir, eval_windows=eval_windows,
                      eval_batch_windows=eval_batch_windows, device=device, dtype=dtype, final_eval=final_eval,
                      data_identity=data_identity)
    scores = trainer.fit(batches)
    return TrainedSAE(model.eval(), scores, trainer)
