"""Typed configs: one dataclass per activation, one per SAE architecture, and the training config.

Each field carries help text (it doubles as ``--help``), `__post_init__` raises `InputError`
naming the field and the fix, and every config round-trips through a JSON dict
(`config_to_dict` / `sae_config_from_dict`, `TrainConfig.from_dict`), with each value's type
checked (`ctxsae_common.typed`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from ctxsae_common.errors import InputError
from ctxsae_common import typed
from ctxsae_common.typed import param, require
from ctxsae_core.registry import ACTIVATION_CONFIGS


# --- activations: how pre-activations become codes -------------------------------------------


@ACTIVATION_CONFIGS.decorator("topk")
@dataclass(frozen=True)
class TopK:
    """Keep the k largest pre-activations at each position (Gao et al. 2024)."""

    kind: ClassVar[str] = "topk"
    k: int = param(32, "active features per position")
    aux_k: int | None = param(
        None, "dead features the AuxK loss may use per position; None means d_in // 2 (Gao et al. 2024, app. B.1)"
    )
    aux_coeff: float = param(1 / 32, "weight of the AuxK dead-feature loss (Gao et al. 2024, app. A.2)")

    def __post_init__(self) -> None:
        require(self.k >= 1, f"k={self.k} must be at least 1: pass --k 1 or more")
        require(self.aux_k is None or self.aux_k >= 1, f"aux_k={self.aux_k} must be at least 1 or None")
        require(self.aux_coeff >= 0, f"aux_coeff={self.aux_coeff} must be >= 0")



@ACTIVATION_CONFIGS.decorator("batchtopk")
@dataclass(frozen=True)
class BatchTopK(TopK):
    """Keep the batch's k * n_positions largest pre-activations, so positions share a budget
    (Bussmann et al. 2024). Inference uses one threshold, estimated during training."""

    kind: ClassVar[str] = "batchtopk"
    threshold_momentum: float = param(0.99, "EMA momentum of the inference threshold estimated during training")
    max_per_position: float | None = param(
        None, "codes at one position against the threshold (inference, and a contextual walk in training) are at "
        "most this many times the budget, the position's largest kept; None: no cap. A contextual SAE's walk can "
        "avalanche where an overshooting state lifts many codes over the threshold at once (docs/design.md)")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(0 <= self.threshold_momentum < 1, f"threshold_momentum={self.threshold_momentum} must be in [0, 1)")
        require(self.max_per_position is None or self.max_per_position >= 1,
                f"max_per_position={self.max_per_position} must be at least 1 (times the budget) or None")


@ACTIVATION_CONFIGS.decorator("relu")
@dataclass(frozen=True)
class ReLU:
    """ReLU codes with an L1 penalty on them (decoder rows are unit norm, so this is the
    decoder-norm-weighted L1 of Anthropic's 2024 update)."""

    kind: ClassVar[str] = "relu"
    l1_coeff: float = param(0.03, "L1 penalty weight (activations are normalised to unit mean squared norm)")

    def __post_init__(self) -> None:
        require(self.l1_coeff >= 0, f"l1_coeff={self.l1_coeff} must be >= 0: pass --l1 0 or more")



@ACTIVATION_CONFIGS.decorator("jumprelu")
@dataclass(frozen=True)
class JumpReLU:
    """pre * H(pre - theta) with a learned per-feature threshold, trained with straight-through
    estimators of the L0 penalty (Rajamanoharan et al. 2024)."""

    kind: ClassVar[str] = "jumprelu"
    l0_coeff: float = param(0.002, "L0 penalty weight (set with --l1 on the command line)")
    bandwidth: float = param(0.001, "width of the STE's rectangle kernel (Rajamanoharan et al. 2024, sec. 4)")
    init_threshold: float = param(0.001, "initial threshold of every feature (Rajamanoharan et al. 2024, sec. 4)")

    def __post_init__(self) -> None:
        require(self.l0_coeff >= 0, f"l0_coeff={self.l0_coeff} must be >= 0: pass --l1 0 or more")
        require(self.bandwidth > 0, f"bandwidth={self.bandwidth} must be > 0")
        require(self.init_threshold > 0, f"init_threshold={self.init_threshold} must be > 0")



ActivationConfig = TopK | BatchTopK | ReLU | JumpReLU


# --- SAE architectures -------------------------------------------------------------------------


@dataclass(frozen=True)
class SAEConfig:
    """A per-position SAE: each position of a window is encoded alone (state == innovations)."""

    d_in: int = param(0, "width of the activations the SAE reads")
    width: int = param(0, "number of dictionary features")
    activation: ActivationConfig = param(TopK(), "how pre-activations become codes")

    @property
    def arch(self) -> str:
        """The architecture's registered name: the activation's kind for a per-position SAE."""
        return self.activation.kind

    def __post_init__(self) -> None:
        require(self.d_in >= 1, f"d_in={self.d_in} must be at least 1")
        require(self.width >= 1, f"width={self.width} must be at least 1: pass --width 1 or more")
        k = getattr(self.activation, "k", None)
        require(
            k is None or k <= self.width,
            f"k={k} is larger than width={self.width}: pass --k at most {self.width} or a larger --width",
        )


CARRY_KINDS = ("gated", "attention")


@dataclass(frozen=True)
class ContextualConfig(SAEConfig):
    """A contextual SAE: innovations u_t are coded against what the state carries from earlier
    positions, s_t = carry(codes before t, u_t) + u_t, and x_hat_t = W_dec s_t + b_dec."""

    activation: ActivationConfig = param(BatchTopK(k=8), "how the encoder's pre-activations become innovations")
    carry: str = param("gated", "how the state reaches a position: 'gated' (persistence along the parent "
                       "pointer, reset by features firing) or 'attention' (causal attention over past codes)")
    reset_rank: int = param(32, "rank of the feature -> feature reset map (both carries)")
    heads: int = param(4, "attention carry: number of heads (each feature is carried by a learned mix of heads)")
    head_dim: int = param(16, "attention carry: query/key width per head")
    carry_threshold: float = param(
        0.01, "carried values below this are set to exactly zero, so state L0 counts no decaying dust "
        "(units: activations normalised to unit mean squared norm)")
    gate_floor: float = param(
        0.5, "a carried feature whose gate falls below this is reset to exactly zero (a hard reset), "
        "so partial resets leave no residue that persists")
    init_persistence: float = param(
        -4.0, "initial persistence logit of every feature (sigmoid(-4) = 0.018): training starts as a "
        "per-position SAE, so the dictionary forms first, and features learn to persist where it pays")
    init_reset: float = param(
        -1.5, "initial logit of the reset map's factors (softplus(-1.5) = 0.2): resets "
        "start strong and are unlearned where they hurt, which happens at most positions")
    carry_lr_scale: float = param(
        10.0, "learning-rate multiplier of the carry's parameters: persistence logits must travel "
        "several units, and Adam moves a parameter about one learning rate per step")
    carry_coeff: float = param(
        0.0, "weight of the carry loss: the squared error of predicting each step from the codes "
        "carried into it alone, which teaches persistence and resets directly; 0 trains the carry on the "
        "reconstruction alone (docs/design.md compares the two)")
    signed: bool = param(
        False, "innovations may be negative where a feature is carried, down to minus its carried value: "
        "one paid code then lowers or ends a carried feature, where otherwise a code can only add to it "
        "(gated carry, TopK or BatchTopK; walks dense states, so it is slower on wide dictionaries)")
    position_gates: bool = param(
        False, "gated carry: each feature's persistence also depends on the step's position along the axis "
        "(a learned linear map of the axis's position features, zero at first), so the carry can learn where "
        "to let go, such as where a raster scan wraps to the next row")

    @property
    def arch(self) -> str:
        """The architecture's registered name."""
        return "contextual"

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.carry in CARRY_KINDS, f"carry={self.carry!r} is unknown: choose one of {', '.join(CARRY_KINDS)}")
        require(self.reset_rank >= 1, f"reset_rank={self.reset_rank} must be at least 1")
        require(self.heads >= 1 and self.head_dim >= 1, f"heads={self.heads}, head_dim={self.head_dim} must be >= 1")
        require(0 <= self.gate_floor <= 1, f"gate_floor={self.gate_floor} must lie in [0, 1]")
        require(self.carry_threshold >= 0, f"carry_threshold={self.carry_threshold} must be >= 0")
        require(self.carry_lr_scale > 0, f"carry_lr_scale={self.carry_lr_scale} must be > 0")
        require(self.carry_coeff >= 0, f"carry_coeff={self.carry_coeff} must be >= 0")
        if self.signed:
            require(self.carry == "gated" and isinstance(self.activation, TopK),
                    f"signed=true needs carry 'gated' and activation topk or batchtopk, not carry {self.carry!r} "
                    f"and activation {self.activation.kind!r}")
        require(not self.position_gates or self.carry == "gated",
                f"position_gates=true needs carry 'gated', not {self.carry!r}")


# --- round trips ----------------------------------------------------------------------------------


def config_to_dict(cfg: SAEConfig) -> dict[str, Any]:
    """JSON-ready dict of an SAE config; `sae_config_from_dict` inverts it."""
    out: dict[str, Any] = {"arch": cfg.arch}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        out[f.name] = {"kind": value.kind, **dataclasses.asdict(value)} if f.name == "activation" else value
    return out


def activation_from_dict(values: dict[str, Any], where: str = "activation") -> ActivationConfig:
    """The activation config a `config_to_dict` entry describes ({"kind": ..., fields...})."""
    if not isinstance(values, dict):
        raise InputError(f"{where}: must be a table with a 'kind', found {type(values).__name__}")
    values = dict(values)
    kind = values.pop("kind", None)
    if kind is None:
        raise InputError(f"{where}: missing 'kind'; choose one of {', '.join(ACTIVATION_CONFIGS.names())}")
    return typed.from_dict(ACTIVATION_CONFIGS[kind], values, where)


def sae_config_from_dict(values: dict[str, Any], where: str = "config.json") -> SAEConfig:
    """Inverse of `config_to_dict`; names the file and field on any mismatch."""
    if not isinstance(values, dict):
        raise InputError(f"{where}: must be a JSON object of SAE config fields, found {type(values).__name__}")
    values = dict(values)
    arch = values.pop("arch", None)
    if arch is None:
        raise InputError(f"{where}: missing 'arch'")
    if "activation" in values:
        values["activation"] = activation_from_dict(values["activation"], f"{where}: activation")
    if arch == "contextual":
        return typed.from_dict(ContextualConfig, values, where)
    cfg = typed.from_dict(SAEConfig, values, where)
    if cfg.activation.kind != arch:
        raise InputError(f"{where}: arch {arch!r} does not match activation kind {cfg.activation.kind!r}")
    return cfg


# --- training --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainConfig:
    """How to train: budget, optimiser schedule, evaluation and checkpoint cadence."""

    tokens: int = param(2_000_000, "training positions in all (steps = tokens // positions per batch)")
    lr: float | None = param(None, "Adam learning rate; None means 2e-3 / sqrt(width / 2**14), at most 1e-2 "
                             "(benchmarks/recipe_sweep.py)")
    warmup_fraction: float = param(0.05, "fraction of steps over which the learning rate warms up linearly")
    decay_fraction: float = param(0.2, "fraction of steps at the end over which it decays linearly to zero")
    max_grad_norm: float = param(
        1.0, "clip the gradient's total norm to this (0: no clipping). Norms are in normalised units; in the "
        "runs measured (synthetic windows, d 96 to 576, widths 1024 and 4608) they ran about 0.1-0.5, so the clip "
        "bound only on spikes, such as a contextual SAE can show once its carry comes on "
        "(benchmarks/synthetic_robustness.py)")
    seed: int = param(0, "seed of the model's initialisation and of every random choice in training")
    shuffle_context: bool = param(
        False, "the shuffled-context control: permute positions within each window before the SAE sees it")
    carry_warmup_fraction: float | None = param(
        None, "contextual SAEs: fraction of steps trained with the carry off (as a per-position SAE), "
        "so the dictionary forms before features learn to persist; None means 0.25 for contextual SAEs")
    k_anneal_fraction: float | None = param(
        None, "TopK/BatchTopK: fraction of steps over which the budget k decays linearly from "
        "k_anneal_start * k to k, so features are learned before the budget tightens; None means 0.5 "
        "for contextual SAEs (whose k counts only what is new) and 0 for per-position ones")
    k_anneal_start: float = param(4.0, "TopK/BatchTopK: starting multiple of k when annealing")
    carry_freeze_at_decay: bool = param(
        False, "contextual SAEs: the carry's parameters (persistences, resets) stop training where the learning "
        "rate starts to decay, and the dictionary decays against fixed gates (docs/design.md: with the carry "
        "decaying too, a control's held-out FVU rose in the decay)")
    shrink_encoder_init: bool = param(
        True, "TopK/BatchTopK: after the data-dependent init, scale the tied encoder down by the "
        "least-squares factor when it over-reconstructs the first batch (a no-op otherwise); needed "
        "when k is comparable to d (e.g. a 4-channel VAE latent), where the tied init starts at FVU >> 1")
    dead_tokens: int | None = param(
        None, "a feature is dead if it has not fired for this many training positions; None means "
        "min(10M, tokens // 10) (10M in Gao et al. 2024)")
    eval_every: int | None = param(None, "held-out evaluation every this many steps, logged to metrics.jsonl as the "
                                   "learning curve; None: 16 times over the run, so that convergence can be judged; "
                                   "0: only at the end")
    checkpoint_every: int = param(200, "write a resumable checkpoint every this many steps (0: only at the end)")
    log_every: int = param(10, "write a training metrics line every this many steps")
    progress: bool = param(True, "show a progress bar")

    def __post_init__(self) -> None:
        require(self.tokens >= 1, f"tokens={self.tokens} must be at least 1: pass --tokens 1 or more")
        require(self.lr is None or self.lr > 0, f"lr={self.lr} must be > 0")
        require(0 <= self.warmup_fraction <= 1 and 0 <= self.decay_fraction <= 1
                 and self.warmup_fraction + self.decay_fraction <= 1,
                 f"warmup_fraction={self.warmup_fraction} and decay_fraction={self.decay_fraction} must lie in "
                 "[0, 1] and sum to at most 1")
        for name in ("carry_warmup_fraction", "k_anneal_fraction"):
            value = getattr(self, name)
            require(value is None or 0 <= value <= 1, f"{name}={value} must lie in [0, 1] or be None")
        require(self.max_grad_norm >= 0, f"max_grad_norm={self.max_grad_norm} must be >= 0 (0: no clipping)")
        require(self.k_anneal_start >= 1, f"k_anneal_start={self.k_anneal_start} must be >= 1")
        require(self.dead_tokens is None or self.dead_tokens >= 1, f"dead_tokens={self.dead_tokens} must be >= 1")
        for name in ("eval_every", "checkpoint_every", "log_every"):
            value = getattr(self, name)
            require(value is None or value >= 0, f"{name}={value} must be >= 0")

    def schedule_for(self, contextual: bool) -> tuple[float, float]:
        """(carry_warmup_fraction, k_anneal_fraction) with the defaults filled in."""
        warm = self.carry_warmup_fraction if self.carry_warmup_fraction is not None else (0.25 if contextual else 0.0)
        anneal = self.k_anneal_fraction if self.k_anneal_fraction is not None else (0.5 if contextual else 0.0)
        return warm, anneal

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; `from_dict` inverts it."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "train config") -> "TrainConfig":
        """A TrainConfig from a dict, every value's type checked; names `where` in any error."""
        return typed.from_dict(cls, values, where)
