"""The main job: images -> autoencoder -> activation stores -> SAE sweep per hook -> metrics.json
and report.html. Every stage resumes: rendered scenes, stores and SAE checkpoints already on
disk are reused, so `visinterp run` run again on the same folder picks up where it stopped."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ctxsae_core.axes import make_axis
from ctxsae_core.checkpoint import load_sae, write_json_atomic
from ctxsae_core.data import seeded_generator
from ctxsae_core.evaluate import evaluate
from visinterp.autoencoders import ImageAutoencoder, load_autoencoder, psnr_per_image
from visinterp.autoencoders.offline import offline_autoencoder
from visinterp.harvest import harvest
from visinterp.image_analysis import error_by_factor, feature_alignment, grid_factors
from visinterp.codes import window_codes
from visinterp.image_saes import SAESpec, reconstruct_map, sweep_specs, train_sae
from visinterp.images import FolderImages, ImageSource, SceneImages
from visinterp.matched_l0 import analysed_pair
from visinterp.run_config import RunConfig
from visinterp.store import ActivationStore


def build_autoencoder(cfg: RunConfig, progress: bool) -> ImageAutoencoder:
    if cfg.autoencoder == "offline":
        return offline_autoencoder(cfg.offline_ae, progress)
    return load_autoencoder(cfg.autoencoder)


def image_source(cfg: RunConfig, out: Path, progress: bool) -> ImageSource:
    if cfg.images.source == "scenes":
        source = SceneImages(out / "scenes", cfg.images.n, cfg.images.size, cfg.images.seed)
        source.ensure(progress)
        return source
    return FolderImages(Path(cfg.images.source), cfg.images.n, cfg.images.size)


def held_out_images(n: int, fraction: float, seed: int) -> torch.Tensor:
    n_held = min(n - 1, max(1, round(n * fraction)))
    return torch.randperm(n, generator=seeded_generator(seed, 11))[:n_held].sort().values


class Run:
    """One `visinterp run`: holds what the stages share."""

    def __init__(self, cfg: RunConfig, out: Path, progress: bool = True):
        self.cfg, self.out, self.progress = cfg, Path(out), progress
        self.out.mkdir(parents=True, exist_ok=True)
        self.ae = build_autoencoder(cfg, progress)
        self.source = image_source(cfg, self.out, progress)
        self.held = held_out_images(self.source.n, cfg.images.held_out, cfg.sweep.seed)
        self.held_images = torch.cat([self.source.load(i, i + 1) for i in self.held.tolist()])
        with torch.no_grad():
            self.clean = self.ae.decode(self.ae.encode(self.held_images))
        self.truths = [self.source.truth(i) for i in self.held.tolist()] if self.source.has_truth else None

    def harvest(self) -> dict[str, Path]:
        h = self.cfg.harvest
        identity = {"images": self.source.describe(), "axis": h.axis}
        return harvest(self.ae, self.source.load, self.source.n, list(h.hooks), self.out / "store", identity,
                       h.tile, h.batch_images, h.shard_windows, self.progress)

    def image_quality(self, hook: str, model, axis, spec: SAESpec) -> dict[str, float]:
        """PSNR of images decoded through the SAE's reconstruction at `hook`, against the images
        decoded with the true map and against the input images."""
        tile, seed = self.cfg.harvest.tile, self.cfg.sweep.seed
        with torch.no_grad():
            spliced = self.ae.splice(self.held_images, hook, lambda m: reconstruct_map(model, m.float(), axis, tile,
                                                                                    spec.shuffle, seed).to(m.dtype))
        return {"psnr_vs_clean_decode": float(psnr_per_image(spliced, self.clean).mean()),
                "psnr_vs_input": float(psnr_per_image(spliced, self.held_images).mean())}

    def _split(self, hook: str, verify: bool = False):
        """The hook's store, its train / held-out window indices (split by image) and axis."""
        store = ActivationStore(self.out / "store" / hook, verify=verify)
        image_index = store.image_index()
        is_held = torch.isin(image_index, self.held)
        axis = make_axis(self.cfg.harvest.axis, store.window_shape[0], store.grid)
        return store, (~is_held).nonzero()[:, 0], is_held.nonzero()[:, 0], axis

    def hook_results(self, hook: str) -> tuple[dict, dict]:
        """Train and evaluate the sweep on one hook's store. Returns (metrics per SAE, what the
        report and notebooks need: axis, held-out windows, models)."""
        store, train_idx, held_idx, axis = self._split(hook, verify=True)
        held_x = store.gather(held_idx)
        metrics, models = {}, {}
        for spec in sweep_specs(self.cfg.sweep, store.window_shape[1]):
            model = train_sae(spec, store, train_idx, axis, self.cfg.sweep, self.sae_folder(hook, spec.name),
                              self.progress)
            scores = evaluate(model, held_x, axis, shuffle_context=spec.shuffle, seed=self.cfg.sweep.seed)
            metrics[spec.name] = {"hook": hook, "arch": spec.config.arch, "series": spec.series, "family": spec.family,
                                  "k": spec.k, "axis": axis.kind, "grid": list(store.grid), "carry": getattr(spec.config, "carry", None),
                                  **{k: scores[k] for k in ("fvu", "mse", "l0", "state_l0", "dead_fraction",
                                                            "n_positions", "state_l0_counting")},
                                  **self.image_quality(hook, model, axis, spec)}
            models[spec.name] = (spec, model)
        return metrics, {"axis": axis, "held_x": held_x, "models": models, "grid": store.grid}

    def load_hook(self, hook: str) -> dict:
        """What `hook_results` returns for the report, read back from a finished run."""
        store, _, held_idx, axis = self._split(hook)
        models = {}
        for spec in sweep_specs(self.cfg.sweep, store.window_shape[1]):
            model, _ = load_sae(self.sae_folder(hook, spec.name))
            models[spec.name] = (spec, model.eval())
        return {"axis": axis, "held_x": store.gather(held_idx), "models": models, "grid": store.grid}

    def sae_folder(self, hook: str, name: str) -> Path:
        return self.out / "saes" / hook / name

    def analysed_pair(self, metrics: dict) -> tuple[str, str]:
        """(per-position SAE, contextual SAE) the report analyses: see matched_l0.analysed_pair."""
        return analysed_pair(metrics, f"contextual_{self.cfg.sweep.carries[0]}")

    def alignment(self, hook_data: dict, names: list[str]) -> dict:
        if self.truths is None:
            return {}
        factors = grid_factors(self.truths, self.map_hw(hook_data), self.cfg.harvest.tile)
        return {name: feature_alignment(self.codes(hook_data, name)["state"], factors, self.cfg.report.unnamed_threshold)
                for name in names}

    def codes(self, hook_data: dict, name: str) -> dict[str, Tensor]:
        """An SAE's outputs on the hook's held-out windows, computed once and kept in hook_data."""
        cache = hook_data.setdefault("codes", {})
        if name not in cache:
            spec, model = hook_data["models"][name]
            cache[name] = window_codes(model, hook_data["held_x"], hook_data["axis"], spec.shuffle, self.cfg.sweep.seed)
        return cache[name]

    def map_hw(self, hook_data: dict) -> tuple[int, int]:
        """The hook's map size per image: the window grid times the tiles per side (images are square)."""
        n_windows = hook_data["held_x"].shape[0] // len(self.held)
        gh, gw = hook_data["grid"]
        side = math.isqrt(n_windows)
        return gh * side, gw * side


def run(cfg: RunConfig, out: Path, progress: bool = True) -> dict:
    """Run the whole job into `out`; returns what metrics.json holds."""
    from visinterp.image_report import write_report

    Path(out).mkdir(parents=True, exist_ok=True)
    write_json_atomic(Path(out) / "config.json", cfg.to_dict())
    job = Run(cfg, out, progress)
    stores = job.harvest()
    result = {"autoencoder": job.ae.metadata(), "images": job.source.describe(), "n_images": job.source.n,
              "held_out_images": job.held.tolist(), "axis": cfg.harvest.axis, "tile": cfg.harvest.tile,
              "autoencoder_psnr_vs_input": float(psnr_per_image(job.clean, job.held_images).mean()),
              "saes": {}, "analysed": {}, "alignment": {}}
    if job.truths is not None:
        result["autoencoder_error_by_factor"] = error_by_factor(job.clean, job.truths)
    hook_data = {}
    for hook in tqdm(stores, desc="hooks", disable=not progress or len(stores) == 1):
        metrics, hook_data[hook] = job.hook_results(hook)
        result["saes"].update({f"{hook}/{k}": v for k, v in metrics.items()})
        pair = job.analysed_pair(metrics)
        result["analysed"][hook] = list(pair)
        result["alignment"][hook] = job.alignment(hook_data[hook], [*pair, pair[1] + "_control"])
    write_json_atomic(out / "metrics.json", result)
    write_report(job, result, hook_data)
    return result
