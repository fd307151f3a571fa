"""The LLM job's typed config (`visinterp llm-compare --config FILE`): the model and hook, the
corpus and how it is cut into windows, and the SAE sweep; every value's type checked and
unknown keys named in a one-line error."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ctxsae_common import typed
from ctxsae_common.files import read_toml
from ctxsae_common.typed import param, require
from ctxsae_core.sweep import SweepConfig


@dataclass(frozen=True)
class CorpusConfig:
    """Which text, cut how."""

    files: tuple[str, ...] = param((), "local .txt / .jsonl files (with hf_dataset: both are used; with neither: "
                                   "the embedded default corpus of prose, code and licence text)")
    hf_dataset: str = param("", "a Hugging Face dataset id (needs internet and `pip install datasets`) or a local "
                            "folder of data files; '' for none")
    hf_split: str = param("train", "the dataset's split")
    hf_text_field: str = param("text", "the dataset's text field")
    hf_region_field: str = param("", "a field holding each row's region label; '' labels every row with the "
                                 "dataset's name")
    hf_rows: int = param(5000, "rows read from the dataset (streamed)")
    window: int = param(64, "tokens per window, position 0 included (it is left out of SAE data)")
    windows: int = param(512, "windows harvested")
    seed: int = param(0, "seed of the span order")
    span_tokens: tuple[int, ...] = param((8, 48), "each span contributes its first lo..hi tokens (seeded), so "
                                         "windows hold region boundaries; () keeps spans whole")
    held_out: float = param(0.2, "fraction of windows held out for evaluation")
    batch: int = param(16, "windows per forward pass")

    def __post_init__(self) -> None:
        require(self.window >= 4, f"corpus.window={self.window} must be at least 4")
        require(self.windows >= 5, f"corpus.windows={self.windows} must be at least 5")
        require(0 < self.held_out < 1, f"corpus.held_out={self.held_out} must lie in (0, 1)")
        require(self.hf_rows >= 1, f"corpus.hf_rows={self.hf_rows} must be at least 1")
        require(self.span_tokens == () or (len(self.span_tokens) == 2 and 1 <= self.span_tokens[0] <= self.span_tokens[1]),
                f"corpus.span_tokens={list(self.span_tokens)} must be [lo, hi] with 1 <= lo <= hi, or []")


@dataclass(frozen=True)
class LLMCompareConfig:
    """Every setting of `visinterp llm-compare`, one field per TOML table (configs/llm/*.toml)."""

    model: str = param("smollm2", "'smollm2' (offline default), a .gguf file, a model folder or a hub id")
    hook: str = param("resid.15", "hook point: resid.L, mlp.L or attn.L")
    shard_windows: int = param(1024, "windows per store shard")
    outlier_norm: float = param(10.0, "windows holding a position (after position 0) whose norm exceeds this many "
                                "times the batch's median norm are left out: such massive activations (a second "
                                "attention sink) can hold most of the variance and make FVU measure them alone")
    ce_windows: int = param(0, "held-out windows the CE losses are scored on (the first of the held-out split; "
                            "0 = all): each SAE's spliced CE runs the whole LM over them, which dominates the time "
                            "of a sweep of small SAEs on a CPU. FVU and the other scores use every held-out window")
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    sweep: SweepConfig = field(default_factory=lambda: SweepConfig(width=2304, k=(8, 16, 32), k_contextual=(4, 8, 16),
                                                                    tokens=500_000))

    def __post_init__(self) -> None:
        require(self.ce_windows >= 0, f"ce_windows={self.ce_windows} must be >= 0 (0 scores CE on every held-out window)")


def llm_config_from_dict(values: dict[str, Any], where: str) -> LLMCompareConfig:
    """The defaults with each table of `values` overriding them field by field; unknown keys
    and values of the wrong type are named in a one-line error."""
    return typed.from_dict(LLMCompareConfig, values, where, defaults=LLMCompareConfig())


def load_llm_config(path: str | Path) -> LLMCompareConfig:
    """The config in a TOML file (configs/llm/*.toml)."""
    return llm_config_from_dict(read_toml(path, "configs/llm/quick.toml"), str(path))
