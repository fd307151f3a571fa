"""The image job: images -> autoencoder -> activation stores -> SAE sweep per hook -> metrics.json,
run.json and report.html. Every stage resumes: rendered scenes, stores and SAE checkpoints
already on disk are reused, so `visinterp run` run again on the same folder picks up where it
stopped. Each SAE's held-out windows go through it once: the metrics, its codes (for
alignment, galleries and maps) and the reconstruction spliced into the autoencoder all come
from that pass."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ctxsae_common.device import resolve_device
from ctxsae_common.errors import InputError
from ctxsae_common.files import save_tensors_atomic, write_folder_atomic, write_json_atomic
from ctxsae_core.axes import ContextAxis, make_axis
from ctxsae_core.data import split_indices
from ctxsae_core.distributed import leave_after_harvest, main_first
from ctxsae_core.metrics import persistence
from ctxsae_core.sae import BaseSAE
from ctxsae_core.pool import check_jobs, train_sweep
from ctxsae_core.sweep import sweep_specs
from visinterp.analysis.codes import evaluate_with_codes, sensitivity, window_codes
from visinterp.analysis.matched_l0 import analysed_pair, middle_contextual
from visinterp.harvest.maps import harvest, untile
from ctxsae_core.store import ActivationStore
from visinterp.image.config import RunConfig
from visinterp.image.factors import error_by_factor, feature_alignment, grid_factors
from visinterp.inputs.images import FolderImages, ImageSource, SceneImages
from visinterp.models.autoencoders import ImageAutoencoder, load_autoencoder, psnr_per_image
from visinterp.models.autoencoders.offline import offline_autoencoder, offline_folder, offline_hook_names
from visinterp.report.run_json import write_run

HELD_IMAGES_FILE = "held_images.safetensors"  # "images" (N, 3, H, W) and "clean" (their decode), held out
AUTOENCODER_FOLDER = "autoencoder"  # a copy of the offline default, so the run folder stands alone


def build_autoencoder(cfg: RunConfig, progress: bool, device: torch.device) -> ImageAutoencoder:
    """The autoencoder the config names, on `device` (the offline default is trained there and
    cached on first use)."""
    if cfg.autoencoder == "offline":
        return offline_autoencoder(cfg.offline_ae, progress, device).to(device)
    return load_autoencoder(cfg.autoencoder).to(device)


def image_source(cfg: RunConfig, out: Path) -> ImageSource:
    """The run's images: scenes to render into out/scenes (`SceneImages.ensure` renders what is
    missing), or a folder's files (checked now, decoded when read)."""
    if cfg.images.source == "scenes":
        return SceneImages(out / "scenes", cfg.images.n, cfg.images.size, cfg.images.seed)
    return FolderImages(Path(cfg.images.source), cfg.images.n, cfg.images.size)


def check_hooks(hooks: tuple[str, ...], offered: list[str], description: str) -> None:
    """Raise InputError naming the first of `hooks` that the autoencoder does not offer."""
    unknown = [h for h in hooks if h not in offered]
    if unknown:
        raise InputError(f"unknown hook {unknown[0]!r} for {description}: choose from {', '.join(offered)}")


@dataclass
class HookData:
    """One hook's held-out windows (those of the held-out images, image-major), its SAEs, and
    their codes there: computed once per SAE and kept sparse."""

    hook: str
    axis: ContextAxis
    grid: tuple[int, int]
    map_hw: tuple[int, int]  # each image's map (h, w)
    tile: int
    n_images: int  # held-out images
    held_x: Tensor  # (N_windows, T, d)
    seed: int
    models: dict[str, BaseSAE] = field(default_factory=dict)
    shuffle: dict[str, bool] = field(default_factory=dict)  # name -> whether it is a shuffled-context control
    codes: dict[str, dict[str, Tensor]] = field(default_factory=dict)  # name -> sparse innovations, state

    def keep_codes(self, name: str, codes: dict[str, Tensor]) -> None:
        """Keep an SAE's innovations and state on the held-out windows, sparse."""
        self.codes[name] = {k: codes[k].to_sparse() for k in ("innovations", "state")}

    def code(self, name: str, kind: str = "state") -> Tensor:
        """(N_windows, T, F) innovations or state of SAE `name` on the held-out windows."""
        if name not in self.models:
            raise InputError(f"no SAE {name!r} at hook {self.hook}: choose from {', '.join(self.models)}")
        if name not in self.codes:
            codes = window_codes(self.models[name], self.held_x, self.axis, self.shuffle[name], self.seed)
            self.keep_codes(name, codes)
        return self.codes[name][kind].to_dense()

    def image_maps(self, codes: Tensor, slot: int) -> Tensor:
        """(F, h, w) maps of codes (N_windows, T, F) over held-out image `slot`."""
        per_image = codes.shape[0] // self.n_images
        windows = codes[slot * per_image : (slot + 1) * per_image]
        return untile(windows, 1, *self.map_hw, self.tile)[0]

    def maps(self, name: str, kind: str = "state") -> list[Tensor]:
        """Per held-out image, the SAE's codes as maps (F, h, w)."""
        codes = self.code(name, kind)
        return [self.image_maps(codes, i) for i in range(self.n_images)]


def hook_store(out: Path, hook: str) -> ActivationStore:
    """The activation store of one hook of a run folder."""
    return ActivationStore(out / "store" / hook)


def store_map_hw(store: ActivationStore, tile: int) -> tuple[int, int]:
    """Each image's map size, as the harvest recorded it."""
    if store.map_hw is None:
        if tile:
            raise InputError(f"{store.folder}: the store does not record its map size (an older harvest): delete "
                             "the store folder and run the job again")
        return tuple(store.grid)
    return tuple(store.map_hw)


class ImageJob:
    """One `visinterp run`: what its stages share."""

    def __init__(self, cfg: RunConfig, out: Path, progress: bool = True, device: str | torch.device = "cpu",
                 jobs: int = 1):
        self.cfg, self.out, self.progress, self.device = cfg, Path(out), progress, resolve_device(device)
        self.jobs = check_jobs(jobs)
        self.source = image_source(cfg, self.out)  # inputs and hooks are checked before anything trains or renders
        if cfg.autoencoder == "offline":
            check_hooks(cfg.harvest.hooks, offline_hook_names(cfg.offline_ae), "the offline autoencoder")
        self.ae = build_autoencoder(cfg, progress, self.device)
        check_hooks(cfg.harvest.hooks, self.ae.hook_names, self.ae.description)
        self.out.mkdir(parents=True, exist_ok=True)
        if isinstance(self.source, SceneImages):
            self.source.ensure(progress)
        _, self.held = split_indices(self.source.n, cfg.images.held_out, cfg.sweep.seed, "images")
        self.held_images = torch.cat([self.source.load(i, i + 1) for i in self.held.tolist()])
        self.clean = self.ae.reconstruct(self.held_images)
        self.truths = [self.source.truth(i) for i in self.held.tolist()] if self.source.has_truth else None

    def harvest(self) -> dict[str, Path]:
        """Every hook's store under out/store (resumes a partial harvest)."""
        h = self.cfg.harvest
        identity = {"images": self.source.describe(), "axis": h.axis}
        return harvest(self.ae, self.source.load, self.source.n, list(h.hooks), self.out / "store", identity,
                       h.tile, h.batch_images, h.shard_windows, self.progress)

    def hook_data(self, hook: str) -> tuple[HookData, ActivationStore, Tensor, Tensor]:
        """The hook's HookData (no SAEs yet), its store, and its train / held-out window indices
        (split by image: a held-out image's windows are all held out)."""
        store = ActivationStore(self.out / "store" / hook, verify=True)
        is_held = torch.isin(store.image_index(), self.held)
        train_idx, held_idx = (~is_held).nonzero()[:, 0], is_held.nonzero()[:, 0]
        axis = make_axis(self.cfg.harvest.axis, store.window_shape[0], store.grid)
        tile = self.cfg.harvest.tile
        data = HookData(hook, axis, tuple(store.grid), store_map_hw(store, tile), tile, len(self.held),
                        store.gather(held_idx), self.cfg.sweep.seed)
        return data, store, train_idx, held_idx

    def run_hook(self, hook: str) -> tuple[dict, HookData, list[int]]:
        """Train and evaluate the sweep on one hook's store: (metrics per SAE, the hook's data,
        its held-out window indices)."""
        data, store, train_idx, held_idx = self.hook_data(hook)
        sweep = self.cfg.sweep
        steps = max(1, sweep.tokens // (sweep.batch_windows * store.window_shape[0]))
        metrics = {}
        trainings = train_sweep(sweep_specs(sweep, store.window_shape[1]), sweep,
                                store.batches(train_idx, sweep.batch_windows, sweep.seed), data.axis,
                                self.out / "saes" / hook, data.held_x, self.device, self.jobs, self.progress,
                                checkpoint_every=max(50, steps // 4))
        for spec, trained in trainings:
            model = trained.model
            scores, codes = evaluate_with_codes(model, data.held_x, data.axis, spec.shuffle, sweep.seed)
            training = trained.trainer.summary(scores)
            data.models[spec.name], data.shuffle[spec.name] = model, spec.shuffle
            data.keep_codes(spec.name, codes)
            metrics[spec.name] = {"hook": hook, **spec.describe(), "axis": data.axis.kind, "grid": list(data.grid),
                                  **{k: scores[k] for k in ("fvu", "mse", "l0", "state_l0", "dead_fraction",
                                                            "n_positions", "state_l0_counting")},
                                  **self.image_quality(data, codes["x_hat"]), **self.persistence(data, spec, codes),
                                  **sensitivity(model, data.held_x, data.axis, spec.shuffle, sweep.seed), **training}
        return metrics, data, held_idx.tolist()

    @staticmethod
    def persistence(data: HookData, spec, codes: dict[str, Tensor]) -> dict:
        """A per-position SAE's persistence ceiling along a raster axis (the share of its active
        features at a patch also active at the patch before it in the scan): {} for the other
        SAEs, and under the quadtree axis, whose carry does not run along the scan."""
        if spec.family != "per-position" or data.axis.kind != "raster":
            return {}
        return {"persistence": persistence(codes["state"] != 0)}

    def image_quality(self, data: HookData, x_hat: Tensor) -> dict[str, float]:
        """PSNR of the held-out images decoded with the SAE's reconstruction `x_hat` (its held-out
        windows) spliced in at the hook, against the images decoded with the true map and
        against the input images."""
        maps = untile(x_hat, data.n_images, *data.map_hw, data.tile)
        with torch.no_grad():
            spliced = self.ae.splice(self.held_images, data.hook, lambda m: maps.to(m))
        return {"psnr_vs_clean_decode": float(psnr_per_image(spliced, self.clean).mean()),
                "psnr_vs_input": float(psnr_per_image(spliced, self.held_images).mean())}

    @property
    def contextual_series(self) -> str | None:
        """The name stem of the contextual SAEs the report analyses (the sweep's first carry), or
        None for a sweep without a carry."""
        carries = self.cfg.sweep.carries
        return f"contextual_{carries[0]}" if carries else None

    def analysed_pair(self, metrics: dict) -> tuple[str, str] | None:
        """(per-position SAE, contextual SAE) the report analyses (see matched_l0.analysed_pair), or
        None for a sweep without both."""
        series = self.contextual_series
        return analysed_pair(metrics, series) if series else None

    def aligned(self, metrics: dict, pair: tuple[str, str] | None) -> list[str]:
        """The SAEs aligned against the scenes' truth: the analysed pair and the contextual SAE's
        control; in a sweep of contextual SAEs alone (an ablation's stage), the one at the middle
        budget and its control; none in a sweep of per-position SAEs alone."""
        if pair:
            names = list(pair)
        else:
            series = self.contextual_series
            alone = middle_contextual(metrics, series) if series else None
            names = [alone] if alone else []
        control = f"{names[-1]}_control" if names else None
        return names + [control] if control in metrics else names

    def alignment(self, data: HookData, names: list[str]) -> dict:
        """Factor alignment of the named SAEs' state on the held-out images ({} without scene truth
        or names)."""
        if self.truths is None or not names:
            return {}
        factors = grid_factors(self.truths, data.map_hw, data.tile)
        return {name: feature_alignment(data.code(name), factors, self.cfg.report.unnamed_threshold)
                for name in names}

    def save_for_views(self) -> dict:
        """The held-out images and their clean decode, and the offline autoencoder, into the run
        folder; returns run.json's autoencoder entry."""
        save_tensors_atomic(self.out / HELD_IMAGES_FILE, {"images": self.held_images, "clean": self.clean})
        entry = {"source": self.cfg.autoencoder, "description": self.ae.description, "folder": None}
        if self.cfg.autoencoder == "offline":
            target = self.out / AUTOENCODER_FOLDER
            if not target.is_dir():
                source = offline_folder(self.cfg.offline_ae)
                write_folder_atomic(target, lambda tmp: shutil.copytree(source, tmp, dirs_exist_ok=True))
            entry["folder"] = AUTOENCODER_FOLDER
        elif Path(self.cfg.autoencoder).exists():
            entry["source"] = str(Path(self.cfg.autoencoder).resolve())
        return entry


def run(cfg: RunConfig, out: Path, progress: bool = True, device: str | torch.device = "cpu", jobs: int = 1) -> dict:
    """Run the whole job into `out` on `device`, training `jobs` SAEs at a time
    (`ctxsae_core.pool`); returns what metrics.json holds ({} on the torchrun ranks other than 0,
    which stop after the shared harvest)."""
    from visinterp.image.report import write_report

    out = Path(out)
    # under torchrun, rank 0 checks the inputs, renders and trains what is missing, then every
    # rank harvests its share of the images; rank 0 alone goes on to train and report
    job = main_first(lambda first: ImageJob(cfg, out, progress and first, device, jobs))
    stores = job.harvest()
    if leave_after_harvest():
        return {}
    write_json_atomic(out / "config.json", cfg.to_dict())
    result = {"autoencoder": job.ae.metadata(), "images": job.source.describe(), "n_images": job.source.n,
              "held_out_images": job.held.tolist(), "axis": cfg.harvest.axis, "tile": cfg.harvest.tile,
              "autoencoder_psnr_vs_input": float(psnr_per_image(job.clean, job.held_images).mean()),
              "saes": {}, "analysed": {}, "alignment": {}}
    if job.truths is not None:
        result["autoencoder_error_by_factor"] = error_by_factor(job.clean, job.truths)
    hooks, record = {}, {}
    for hook in tqdm(stores, desc="hooks", disable=not progress or len(stores) == 1):
        metrics, hooks[hook], held_windows = job.run_hook(hook)
        result["saes"].update({f"{hook}/{k}": v for k, v in metrics.items()})
        pair = job.analysed_pair(metrics)
        result["analysed"][hook] = list(pair) if pair else []
        result["alignment"][hook] = job.alignment(hooks[hook], job.aligned(metrics, pair))
        data = hooks[hook]
        record[hook] = {"store": f"store/{hook}", "axis": data.axis.to_dict(), "grid": list(data.grid),
                        "map_hw": list(data.map_hw), "tile": data.tile, "held_windows": held_windows,
                        "saes": {name: {"folder": f"saes/{hook}/{name}", "shuffle": data.shuffle[name]}
                                 for name in data.models}}
    write_run(out, "image", autoencoder=job.save_for_views(), images=job.source.describe(),
              held_out_images=job.held.tolist(), held_images_file=HELD_IMAGES_FILE, seed=cfg.sweep.seed,
              analysed=result["analysed"], hooks=record)
    write_json_atomic(out / "metrics.json", result)
    write_report(job, result, hooks)
    return result
