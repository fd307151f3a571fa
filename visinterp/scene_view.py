"""Exploring a finished `visinterp scene-features` folder from a notebook: each SAE's codes on
the held-out windows, pictures of where features fire, how often a feature fires on each
value of each ground-truth factor (a first guess at naming an unnamed one), and groups of
unnamed features that fire together."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

from torch import Tensor

from ctxsae_core import make_axis
from ctxsae_core.checkpoint import load_sae, load_tensors_and_metadata
from ctxsae_core.errors import InputError
from visinterp.codes import window_codes
from visinterp.scene_features import FACTOR_NAMES, HELD_FILE
from visinterp.scene_figures import pictures_figure


class SceneFeaturesView:
    def __init__(self, folder: str | Path):
        self.out = Path(folder)
        if not (self.out / "report.json").is_file() or not (self.out / HELD_FILE).is_file():
            raise InputError(f"{self.out}: no scene-features output (report.json and {HELD_FILE}): run `visinterp "
                             f"scene-features --fit FIT --out {self.out}` first")
        self.report = json.loads((self.out / "report.json").read_text())
        held, meta = load_tensors_and_metadata(self.out / HELD_FILE, "held-out windows")
        self.acts, self.where = held["acts"], held["where"]
        self.factors = {k.split("/", 1)[1]: v for k, v in held.items() if k.startswith("factor/")}
        self.continuous = tuple(json.loads(meta["continuous"]))
        grid = json.loads(meta["grid"])
        self.axis = make_axis(meta["axis"], self.acts.shape[1], tuple(grid) if grid else None)

    @property
    def names(self) -> list[str]:
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
        m = self._model_report(name)
        model, _ = load_sae(self.out / m["folder"])
        return window_codes(model, self.acts, self.axis, m["shuffle_context"], self.report["seed"],
                            permutation_key=())["state"]

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
