"""`visinterp llm-compare`: per-position vs contextual SAEs on a causal LM's token windows,
side by side: harvest (resumable, into the activation store), train the sweep with shuffled
controls, and score reconstruction, spliced-in CE loss and localization against the corpus's
region labels. Writes comparison.json (`visinterp.llm_report` turns it into report.html)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor
from tqdm.auto import tqdm

from ctxsae_core.axes import make_axis
from ctxsae_core.checkpoint import save_tensors_atomic, write_json_atomic, write_text_atomic
from ctxsae_core.config import _build, param, require
from ctxsae_core.data import seeded_generator
from ctxsae_core.metrics import switch_rate
from visinterp.alignment import alignment_table
from visinterp.codes import evaluate_with_codes
from visinterp.corpus import Span, TokenWindows, default_corpus, hf_corpus, local_corpus, token_windows
from visinterp.image_saes import sweep_specs, train_sae
from visinterp.llm import CausalLM, load_causal_lm
from visinterp.matched_l0 import goals, matched_table
from visinterp.run_config import SweepConfig, read_toml
from visinterp.store import ActivationStore, StoreWriter

TOKENS_FILE = "tokens.safetensors"  # the harvested windows' token ids, region labels and span starts
REGIONS_FILE = "regions.txt"


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
    model: str = param("smollm2", "'smollm2' (offline default), a .gguf file, a model folder or a hub id")
    hook: str = param("resid.15", "hook point: resid.L, mlp.L or attn.L")
    shard_windows: int = param(1024, "windows per store shard")
    outlier_norm: float = param(10.0, "windows holding a position (after position 0) whose norm exceeds this many "
                                "times the batch's median norm are left out: such massive activations (a second "
                                "attention sink) held 84-96% of all variance and made FVU measure them alone")
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    sweep: SweepConfig = field(default_factory=lambda: SweepConfig(width=2304, k=(8, 16, 32), k_contextual=(4, 8, 16),
                                                                    tokens=500_000))


def llm_config_from_dict(values: dict, where: str) -> LLMCompareConfig:
    """Tables override the defaults field by field; unknown keys are named in the error."""
    values = dict(values)
    base = LLMCompareConfig()
    parts = {}
    for name, cls in {"corpus": CorpusConfig, "sweep": SweepConfig}.items():
        given = {k: tuple(v) if isinstance(v, list) else v for k, v in values.pop(name, {}).items()}
        parts[name] = _build(cls, {**dataclasses.asdict(getattr(base, name)), **given}, f"{where} [{name}]")
    return _build(LLMCompareConfig, {**values, **parts}, where)


def load_llm_config(path: str | Path) -> LLMCompareConfig:
    return llm_config_from_dict(read_toml(path, "configs/llm/quick.toml"), str(path))


def corpus_spans(cfg: CorpusConfig) -> list[Span]:
    if not cfg.files and not cfg.hf_dataset:
        return default_corpus()
    spans = local_corpus(list(cfg.files)) if cfg.files else []
    if cfg.hf_dataset:
        spans += hf_corpus(cfg.hf_dataset, cfg.hf_split, cfg.hf_text_field, cfg.hf_region_field, cfg.hf_rows)
    return spans


def held_split(n: int, cfg: LLMCompareConfig) -> tuple[Tensor, Tensor]:
    """(train rows, held-out rows) of a store of n windows, seeded by the sweep's seed."""
    held = torch.randperm(n, generator=seeded_generator(cfg.sweep.seed, 11))[: max(1, round(n * cfg.corpus.held_out))]
    held = held.sort().values
    train = torch.tensor(sorted(set(range(n)) - set(held.tolist())))
    return train, held


def load_windows(out: Path) -> TokenWindows:
    saved = load_file(str(out / TOKENS_FILE))
    return TokenWindows(saved["ids"], saved["region"], saved["span_start"].bool(),
                        tuple((out / REGIONS_FILE).read_text().split("\n")))


def harvest_tokens(lm: CausalLM, windows: TokenWindows, cfg: LLMCompareConfig, out: Path, progress: bool) -> ActivationStore:
    """Activations at the hook for positions 1..T-1 of each window into out/store (resumable)."""
    identity = {"model": lm.description, "hook": cfg.hook, "axis": "tokens", "window": cfg.corpus.window,
                "corpus": {k: v for k, v in dataclasses.asdict(cfg.corpus).items() if k not in ("held_out", "batch")}}
    writer = StoreWriter(out / "store", identity, cfg.shard_windows)
    n, b = windows.ids.shape[0], cfg.corpus.batch
    for a in tqdm(range(writer.done_items, n, b), desc=f"harvest {cfg.hook}", unit="batch", disable=not progress):
        ids = windows.ids[a : a + b]
        acts = lm.capture(ids, [cfg.hook])[cfg.hook][:, 1:]  # position 0 (the attention sink) is left out
        norms = acts.norm(dim=-1)
        keep = ~(norms > cfg.outlier_norm * norms.median()).any(1)
        writer.add(acts[keep], torch.arange(a, a + ids.shape[0])[keep], ids.shape[0])
    writer.grid = (1, windows.ids.shape[1] - 1)
    writer.flush()
    return ActivationStore(out / "store", verify=True)


def near_boundary(boundaries: Tensor, radius: int = 2) -> Tensor:
    """(N, T) bool: within `radius` tokens of a region boundary (either side)."""
    near = boundaries.clone()
    for shift in range(1, radius + 1):
        near[:, shift:] |= boundaries[:, :-shift]
        near[:, :-shift] |= boundaries[:, shift:]
    return near


def localization(state: Tensor, innovations: Tensor, region: Tensor, boundaries: Tensor, regions: tuple[str, ...],
                 tracking_auroc: float = 0.75) -> dict:
    """Best feature AUROC per region label; mean within-region switch rate of the features that
    track a region (best AUROC >= tracking_auroc); fraction of innovations within 2 tokens of a
    region boundary, beside the fraction of positions that are."""
    table = alignment_table(state.reshape(-1, state.shape[-1]), {"region": region.reshape(-1)},
                            names={"region": regions}, min_count=5)
    tracking = (table["best_by_feature"] >= tracking_auroc).nonzero()[:, 0]
    rates = switch_rate(state > 0, region)
    near = near_boundary(boundaries)
    paid = (innovations > 0).sum(-1).float()
    return {"best_auroc_by_region": {k: v["auroc"] for k, v in table["factors"]["region"].items()},
            "best_feature_by_region": {k: v["feature"] for k, v in table["factors"]["region"].items()},
            "n_region_tracking_features": int(tracking.numel()),
            "switch_rate_of_region_tracking_features": float(rates[tracking].nanmean()) if tracking.numel() else math.nan,
            "innovations_near_boundary": float(paid[near].sum() / paid.sum().clamp(min=1)),
            "positions_near_boundary": float(near.float().mean())}


def compare(cfg: LLMCompareConfig, out: Path, progress: bool = True) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "config.json", dataclasses.asdict(cfg))
    lm = load_causal_lm(cfg.model)
    lm.hook_module(cfg.hook)  # a bad hook fails before any work
    tokens_path = out / TOKENS_FILE
    if tokens_path.is_file():
        windows = load_windows(out)
    else:
        windows = token_windows(corpus_spans(cfg.corpus), lambda t: lm.tokenizer(t)["input_ids"], cfg.corpus.window, cfg.corpus.windows,
                                cfg.corpus.seed, span_tokens=tuple(cfg.corpus.span_tokens) or None)
        save_tensors_atomic(tokens_path, {"ids": windows.ids, "region": windows.region,
                                          "span_start": windows.span_start.to(torch.uint8)})
        write_text_atomic(out / REGIONS_FILE, "\n".join(windows.regions))
    store = harvest_tokens(lm, windows, cfg, out, progress)
    n = store.n_windows
    window_of = store.image_index()  # store row -> harvested window (outlier windows are not stored)
    train, held = held_split(n, cfg)
    axis = make_axis("tokens", store.window_shape[0])
    held_x = store.gather(held)
    held_w = window_of[held]
    held_ids = windows.ids[held_w]
    region, boundaries = windows.region[held_w][:, 1:], windows.boundaries()[held_w][:, 1:]
    ce_clean = lm.ce_loss(held_ids)
    ce_zero = lm.ce_loss(held_ids, cfg.hook, torch.zeros_like(held_x))
    result = {"model": lm.description, "hook": cfg.hook, "window": cfg.corpus.window, "held_out_windows": len(held),
              "windows_harvested": int(windows.ids.shape[0]), "windows_left_out_as_outliers": int(windows.ids.shape[0] - n),
              "ce_clean": ce_clean, "ce_zero_ablation": ce_zero, "regions": list(windows.regions), "saes": {}}
    for spec in sweep_specs(cfg.sweep, store.window_shape[1]):
        model = train_sae(spec, store, train, axis, cfg.sweep, out / "saes" / spec.name, progress)
        scores, codes = evaluate_with_codes(model, held_x, axis, spec.shuffle, cfg.sweep.seed)
        # held_x is exactly the hook's output at positions 1.. of held_ids (same model, same ids),
        # so the reconstruction computed above is what gets spliced in
        ce_spliced = lm.ce_loss(held_ids, cfg.hook, codes["x_hat"])
        result["saes"][spec.name] = {
            "arch": spec.config.arch, "series": spec.series, "family": spec.family, "carry": getattr(spec.config, "carry", None), "k": spec.k,
            **{k: scores[k] for k in ("l0", "state_l0", "fvu", "mse", "dead_fraction", "state_l0_counting")},
            "ce_clean": ce_clean, "ce_spliced": ce_spliced, "ce_zero_ablation": ce_zero,
            "ce_recovered": (ce_zero - ce_spliced) / (ce_zero - ce_clean), "delta_ce": ce_spliced - ce_clean,
            **localization(codes["state"], codes["innovations"], region, boundaries, windows.regions)}
    ctx_l0 = sorted(m["l0"] for m in result["saes"].values() if m["family"] == "contextual")
    result["matched_l0"] = matched_table(result["saes"], ctx_l0)
    result["goals"] = goals(result["saes"])
    write_json_atomic(out / "comparison.json", result)
    return result
