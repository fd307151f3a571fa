"""The LLM job (`visinterp llm-compare`): per-position vs contextual SAEs on a causal LM's token
windows, side by side: harvest (resumable, into the activation store), train the sweep with
shuffled controls, and score reconstruction, spliced-in CE loss and localization against the
corpus's region labels. Writes comparison.json and run.json (`visinterp.llm.report` turns them
into report.html). Each SAE's held-out windows go through it once: metrics, codes and the
reconstruction spliced into the LM come from that pass."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from ctxsae_common.device import resolve_device
from ctxsae_common.files import load_tensors, save_tensors_atomic, write_json_atomic, write_text_atomic
from ctxsae_core.axes import make_axis
from ctxsae_core.data import split_indices
from ctxsae_core.distributed import leave_after_harvest, main_first
from ctxsae_core.store import derived_store
from ctxsae_core.metrics import fvu, mse, persistence
from ctxsae_core.pool import check_jobs, train_sweep
from ctxsae_core.sweep import sweep_specs
from visinterp.analysis.baselines import null_fvus, unigram_table
from visinterp.analysis.codes import evaluate_with_codes, sensitivity
from visinterp.analysis.localization import localization
from visinterp.analysis.matched_l0 import goals, matched_table
from visinterp.harvest.tokens import harvest_tokens
from visinterp.inputs.corpus import Span, TokenWindows, default_corpus, hf_corpus, local_corpus, token_windows
from visinterp.llm.config import CorpusConfig, LLMCompareConfig
from visinterp.models.causal_lm import load_causal_lm
from visinterp.report.run_json import write_run

TOKENS_FILE = "tokens.safetensors"  # the harvested windows' token ids, region labels and span starts
REGIONS_FILE = "regions.txt"


def corpus_spans(cfg: CorpusConfig) -> list[Span]:
    """The corpus the config names: local files and/or a dataset, or the embedded default."""
    if not cfg.files and not cfg.hf_dataset:
        return default_corpus()
    spans = local_corpus(list(cfg.files)) if cfg.files else []
    if cfg.hf_dataset:
        spans += hf_corpus(cfg.hf_dataset, cfg.hf_split, cfg.hf_text_field, cfg.hf_region_field, cfg.hf_rows)
    return spans


def load_windows(out: Path) -> TokenWindows:
    """The token windows a run harvested (token ids, region labels, span starts, region names)."""
    saved = load_tensors(out / TOKENS_FILE, "token windows")
    return TokenWindows(saved["ids"], saved["region"], saved["span_start"].bool(),
                        tuple((out / REGIONS_FILE).read_text().split("\n")))


def _token_windows(cfg: LLMCompareConfig, spans, lm, out: Path) -> TokenWindows:
    """The run's token windows: read back if already cut, else cut from the corpus's spans and saved."""
    if (out / TOKENS_FILE).is_file():
        return load_windows(out)
    windows = token_windows(spans, lambda t: lm.tokenizer(t)["input_ids"], cfg.corpus.window,
                            cfg.corpus.windows, cfg.corpus.seed, span_tokens=tuple(cfg.corpus.span_tokens) or None)
    save_tensors_atomic(out / TOKENS_FILE, {"ids": windows.ids, "region": windows.region,
                                            "span_start": windows.span_start.to(torch.uint8)})
    write_text_atomic(out / REGIONS_FILE, "\n".join(windows.regions))
    return windows


def _training_tokens(store, train: torch.Tensor, windows: TokenWindows):
    """(token ids (n, T-1), activations (n, T-1, d)) of the training windows, shard by shard."""
    rows = torch.zeros(store.n_windows, dtype=torch.bool)
    rows[train] = True
    for i in range(len(store.shards)):
        tensors = store.read_shard(i)
        mine = rows[int(store.offsets[i]) : int(store.offsets[i + 1])]
        if mine.any():
            yield windows.ids[tensors["image_index"][mine]][:, 1:], tensors["activations"][mine]


def compare(cfg: LLMCompareConfig, out: Path, progress: bool = True, device: str | torch.device = "cpu",
            jobs: int = 1) -> dict:
    """Run the whole job into `out`, the LM and the SAEs on `device`, training `jobs` SAEs at a
    time (`ctxsae_core.pool`); returns what comparison.json holds ({} on the torchrun ranks other
    than 0, which stop after the shared harvest)."""
    device = resolve_device(device)
    check_jobs(jobs)
    out = Path(out)
    # the corpus (files, dataset) is read before the model loads, and the hook checked before any
    # work, so that bad input fails in seconds and leaves no folder behind
    spans = None if (out / TOKENS_FILE).is_file() else corpus_spans(cfg.corpus)
    lm = load_causal_lm(cfg.model, device, progress)
    lm.hook_module(cfg.hook)

    def cut_windows(first: bool) -> TokenWindows:  # under torchrun rank 0 cuts them, the others read them
        if first:
            out.mkdir(parents=True, exist_ok=True)
            write_json_atomic(out / "config.json", dataclasses.asdict(cfg))
        return _token_windows(cfg, spans, lm, out)

    windows = main_first(cut_windows)
    identity = {"model": lm.description, "window": cfg.corpus.window,
                "corpus": {k: v for k, v in dataclasses.asdict(cfg.corpus).items() if k not in ("held_out", "batch")}}
    store = harvest_tokens(lm, windows.ids, cfg.hook, out / "store", identity, batch=cfg.corpus.batch,
                           shard_windows=cfg.shard_windows, outlier_norm=cfg.outlier_norm, progress=progress)
    if leave_after_harvest():  # every rank harvested its share; rank 0 alone trains and reports
        return {}
    window_of = store.image_index()  # store row -> harvested window (outlier windows are not stored)
    train, held = split_indices(store.n_windows, cfg.corpus.held_out, cfg.sweep.seed)
    axis = make_axis("tokens", store.window_shape[0])
    held_x = store.gather(held)
    held_w = window_of[held]
    held_ids = windows.ids[held_w]
    region, boundaries = windows.region[held_w][:, 1:], windows.boundaries()[held_w][:, 1:]
    ce_rows = slice(0, cfg.ce_windows or None)  # the held-out windows CE is scored on
    ce_clean = lm.ce_loss(held_ids[ce_rows])
    ce_zero = lm.ce_loss(held_ids[ce_rows], cfg.hook, torch.zeros_like(held_x[ce_rows]))
    result = {"model": lm.description, "hook": cfg.hook, "window": cfg.corpus.window, "held_out_windows": len(held),
              "ce_windows": len(held_ids[ce_rows]),
              "windows_harvested": int(windows.ids.shape[0]),
              "windows_left_out_as_outliers": int(windows.ids.shape[0] - store.n_windows),
              "ce_clean": ce_clean, "ce_zero_ablation": ce_zero, "regions": list(windows.regions),
              "subtract": cfg.sweep.subtract, "saes": {}}
    table = unigram_table(_training_tokens(store, train, windows))
    result["baselines"] = null_fvus(held_x, held_ids[:, 1:], table)
    sae_store, offset = store, None  # the SAEs code x, or x - offset with a subtracted table
    if cfg.sweep.subtract == "unigram":
        sae_store = derived_store(store, out / "store_unigram", {"subtract": "unigram", "held_out": cfg.corpus.held_out,
                                                                 "split_seed": cfg.sweep.seed},
                                  lambda acts, index: acts - table.predict(windows.ids[index][:, 1:]))
        offset = table.predict(held_ids[:, 1:])
    held_in = held_x if offset is None else held_x - offset
    saes = {}
    for spec, trained in train_sweep(sweep_specs(cfg.sweep, store.window_shape[1]), cfg.sweep,
                                     sae_store.batches(train, cfg.sweep.batch_windows, cfg.sweep.seed), axis,
                                     out / "saes", held_in, device, jobs, progress):
        model = trained.model
        scores, codes = evaluate_with_codes(model, held_in, axis, spec.shuffle, cfg.sweep.seed)
        summary = trained.trainer.summary(scores)  # the learning curve is of what the SAE coded
        # held_x is exactly the hook's output at positions 1.. of held_ids (same model, same ids),
        # so the reconstruction (plus the subtracted table) is what gets spliced in
        x_hat = codes["x_hat"] if offset is None else codes["x_hat"] + offset
        ce_spliced = lm.ce_loss(held_ids[ce_rows], cfg.hook, x_hat[ce_rows])
        if offset is not None:  # "fvu" and "mse" stay on the raw activations, as for every run
            scores = {**scores, "fvu_residual": scores["fvu"], "fvu": fvu(held_x, x_hat),
                      "mse": mse(held_x, x_hat)}
        result["saes"][spec.name] = {
            **spec.describe(), **{k: scores[k] for k in ("l0", "state_l0", "fvu", "mse", "dead_fraction",
                                                          "state_l0_counting", "fvu_residual") if k in scores},
            "ce_clean": ce_clean, "ce_spliced": ce_spliced, "ce_zero_ablation": ce_zero,
            "ce_recovered": (ce_zero - ce_spliced) / (ce_zero - ce_clean), "delta_ce": ce_spliced - ce_clean,
            **localization(codes["state"], codes["innovations"], region, boundaries, windows.regions),
            **({"persistence": persistence(codes["state"] != 0)} if spec.family == "per-position" else {}),
            **sensitivity(model, held_in, axis, spec.shuffle, cfg.sweep.seed),
            **summary}
        saes[spec.name] = {"folder": f"saes/{spec.name}", "shuffle": spec.shuffle}
    ctx_l0 = sorted(m["l0"] for m in result["saes"].values() if m["family"] == "contextual")
    result["matched_l0"] = matched_table(result["saes"], ctx_l0)
    result["goals"] = goals(result["saes"])
    write_run(out, "llm", model=cfg.model, hook=cfg.hook, store=sae_store.folder.name, axis=axis.to_dict(),
              held_out_windows=held.tolist(), tokens_file=TOKENS_FILE, regions_file=REGIONS_FILE,
              seed=cfg.sweep.seed, saes=saes)
    write_json_atomic(out / "comparison.json", result)
    return result
