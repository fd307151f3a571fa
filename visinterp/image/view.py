"""A finished `visinterp run` folder, read back for a notebook: its unnamed features, their
galleries, steering with them, and groups of features that fire together. Everything comes from
the run folder (run.json, metrics.json, the stores, the SAEs, the held-out images and a copy of
the offline autoencoder); nothing is retrained."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ctxsae_common.errors import InputError
from ctxsae_common.files import load_tensors, read_json_object
from ctxsae_core.axes import ContextAxis
from ctxsae_core.checkpoint import load_sae
from ctxsae_core.store import ActivationStore
from visinterp.image.config import run_config_from_dict
from visinterp.image.report import gallery_figure, steering_figure
from visinterp.image.run import HookData
from visinterp.image.steering import steer
from visinterp.models.autoencoders import ImageAutoencoder, load_autoencoder
from visinterp.models.autoencoders.offline import load_offline
from visinterp.report.run_json import find_run_folder, read_run


class RunView:
    """A finished run: metrics, config, the held-out images (and their clean decode), and per
    hook the SAEs and their codes on the held-out windows. The autoencoder (for steering) is
    loaded when first needed: the run folder's copy of the offline default, or the folder or
    hub id the run named."""

    def __init__(self, folder: str | Path):
        self.folder = find_run_folder(folder)
        self.run = read_run(self.folder, "image")
        self.metrics = read_json_object(self.folder / "metrics.json", "run metrics")
        self.config = run_config_from_dict(read_json_object(self.folder / "config.json", "run config"),
                                           str(self.folder / "config.json"))
        held = load_tensors(self.folder / self.run["held_images_file"], "held-out images")
        self.held_images, self.clean = held["images"], held["clean"]
        self._hooks: dict[str, HookData] = {}
        self._ae: ImageAutoencoder | None = None

    @property
    def hooks(self) -> list[str]:
        """The run's hooks, in harvest order."""
        return list(self.run["hooks"])

    def contextual(self, hook: str) -> str:
        """Name of the contextual SAE the report analysed for `hook`."""
        self._record(hook)
        if not self.run["analysed"][hook]:
            raise InputError(f"{self.folder}: the sweep at hook {hook} trained no contextual SAE beside a per-position "
                             "one, so none was analysed: pass the name of an SAE of its run.json instead")
        return self.run["analysed"][hook][1]

    def _record(self, hook: str) -> dict:
        if hook not in self.run["hooks"]:
            raise InputError(f"no hook {hook!r} in {self.folder}: choose from {', '.join(self.hooks)}")
        return self.run["hooks"][hook]

    def hook(self, hook: str) -> HookData:
        """The hook's held-out windows and SAEs (loaded once)."""
        if hook not in self._hooks:
            rec = self._record(hook)
            store = ActivationStore(self.folder / rec["store"])
            data = HookData(hook, ContextAxis.from_dict(rec["axis"], str(self.folder / "run.json")), tuple(rec["grid"]),
                            tuple(rec["map_hw"]), rec["tile"], len(self.run["held_out_images"]),
                            store.gather(torch.tensor(rec["held_windows"])), self.run["seed"])
            for name, sae in rec["saes"].items():
                data.models[name] = load_sae(self.folder / sae["folder"])[0]
                data.shuffle[name] = sae["shuffle"]
            self._hooks[hook] = data
        return self._hooks[hook]

    @property
    def autoencoder(self) -> ImageAutoencoder:
        """The run's autoencoder, loaded on first use."""
        if self._ae is None:
            entry = self.run["autoencoder"]
            if entry["folder"]:
                self._ae = load_offline(self.folder / entry["folder"])
            else:
                try:
                    self._ae = load_autoencoder(entry["source"])
                except InputError as e:
                    raise InputError(f"the run's autoencoder {entry['source']!r} cannot be loaded here ({e}): steering "
                                     "needs it; galleries and codes do not") from None
        return self._ae

    def state(self, hook: str, name: str | None = None) -> Tensor:
        """State codes (held-out windows, T, F) of an SAE (default: the analysed contextual one)."""
        return self.hook(hook).code(name or self.contextual(hook))

    def unnamed(self, hook: str, name: str | None = None) -> list[int]:
        """Live features aligned with no known scene factor, most active first (from metrics.json)."""
        return self.metrics["alignment"][hook][name or self.contextual(hook)]["unnamed"]

    def state_maps(self, hook: str, name: str | None = None) -> list[Tensor]:
        """Per held-out image, the state codes as maps (F, h, w)."""
        return self.hook(hook).maps(name or self.contextual(hook))

    def gallery(self, hook: str, features: list[int], name: str | None = None, top: int = 6):
        """Per feature (row), the held-out images where its state is largest, with its heatmap."""
        name = name or self.contextual(hook)
        return gallery_figure(self.held_images, self.state_maps(hook, name), features,
                              min(top, len(self.held_images)), f"{hook} {name}")

    def steer(self, hook: str, features: list[int], name: str | None = None, scale: float | None = None,
              images: int = 3):
        """Add each feature's decoder direction (scale x its mean active value) at every patch of
        the hook's map and decode: a figure of original | decoded | steered by each feature."""
        name = name or self.contextual(hook)
        scale = self.config.report.steer_scale if scale is None else scale
        model = self.hook(hook).models[name]
        state = self.state(hook, name).reshape(-1, model.config.width)
        slots = list(range(min(images, len(self.held_images))))
        after = steer(self.autoencoder, model, hook, self.held_images[slots], state, features, scale)
        return steering_figure(self.held_images[slots], self.clean[slots], after, slots, scale)
