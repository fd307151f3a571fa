"""Exploring a finished `visinterp scene-features` folder from a notebook: each SAE's codes on
the held-out windows, pictures of where features fire, how often a feature fires on each
value of each ground-truth factor (a first guess at naming an unnamed one), and groups of
unnamed features that fire together."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

from torch import Tensor

from ctxsae_common.errors import InputError
from ctxsae_common.files import load_tensors_and_metadata, read_json_object
from ctxsae_core.axes import ContextAxis
from ctxsae_core.checkpoint import load_sae
from visinterp.analysis.codes import window_codes
from visinterp.coords.figures import pictures_figure
from visinterp.coords.run import FACTOR_NAMES
from visinterp.report.run_json import find_run_folder, read_run


class SceneFeaturesView:
    """A finished `visinterp scene-features` folder: report.json, the held-out windows with their
    factors, and the SAEs, read back from the folder alone."""

    def __init__(self, folder: str | Path):
        self.out = find_run_folder(folder)
        self.run = read_run(self.out, "coords")
        self.report = read_json_object(self.out / "report.json", "scene-features report")
        held, meta = load_tensors_and_metadata(self.out / self.run["held_file"], "held-out windows")
        self.acts, self.where = held["acts"], held["where"]
        self.factors = {k.split("/", 1)[1]: v for k, v in held.items() if k.startswith("factor/")}
        self.continuous = tuple(json.loads(meta["continuous"]))
        self.axis = ContextAxis.from_dict(self.run["axis"], str(self.out / "run.json"))

    @property
    def contextual(self) -> str:
        """Name of the contextual SAE (not its control)."""
        return self.run["analysed"]

    @property
    def names(self) -> list[str]:
        """The SAEs of the run, in training order."""
        return list(self.report["models"])

    def unnamed(self, name: str) -> list[int]:
        """The SAE's live features that align with no known factor, most active first (up to 20)."""
        return list(self._model_report(name)["unnamed"])

    def _model_report(self, name: str) -> dict:
        if name not in self.report["models"]:
            raise InputError(f"no SAE {name!r} in {self.out}: choose from {', '.join(self.names)}")
        return self.report["models"][name]

    @cache
    def state(self, name: str) -> Tensor:
        """(N, T, F) state codes on the held-out windows, in window order (as report.json scored them)."""
        self._model_report(name)
        sae = self.run["saes"][name]
        model, _ = load_sae(self.out / sae["folder"])
        return window_codes(model, self.acts, self.axis, sae["shuffle"], self.run["seed"])["state"]

    def pictures(self, name: str, features: list[int], view: int = 0):
        """Per feature, its largest state at each pixel of the view (over ray samples or tile positions)."""
        return pictures_figure(self.state(name), self.where, features, f"{name} (view {view})", view)

    def factor_profile(self, name: str, feature: int, min_count: int = 5) -> dict[str, dict[str, float]]:
        """For each categorical factor, the fraction of positions with each value where the
        feature is on (values seen at fewer than min_count positions are left out)."""
        on = (self.state(name)[..., feature] > 0).reshape(-1).float()
        out = {}
        for factor, labels in self.factors.items():
            if factor in self.continuous:
                continue
            flat, names = labels.reshape(-1), FACTOR_NAMES.get(factor)
            rates = {}
            for value in flat.unique().tolist():
                mask = flat == value
                if mask.sum() >= min_count:
                    label = "none" if value < 0 else names[value] if names and value < len(names) else str(value)
                    rates[label] = round(float(on[mask].mean()), 3)
            out[factor] = rates
        return out
