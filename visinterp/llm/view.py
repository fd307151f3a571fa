"""A finished `visinterp llm-compare` folder, read back for the report and for notebooks:
comparison.json, the held-out windows (token ids, region labels, boundaries, activations),
each SAE and its codes; and the views people look at: Pareto plots, token strips of
innovations vs carried state, top-activating contexts."""

from __future__ import annotations

import html
from functools import cache
from pathlib import Path

from torch import Tensor

import torch

from ctxsae_common.errors import InputError
from ctxsae_common.files import read_json_object
from ctxsae_core.axes import ContextAxis
from ctxsae_core.checkpoint import load_sae
from ctxsae_core.sae import BaseSAE
from scenes.figures import pyplot
from visinterp.analysis.codes import window_codes
from visinterp.analysis.matched_l0 import analysed_pair
from ctxsae_core.store import ActivationStore
from visinterp.llm.config import llm_config_from_dict
from visinterp.llm.run import load_windows
from visinterp.models.causal_lm import load_tokenizer
from visinterp.report.page import CSS, learning_curve_panel, pareto_panel
from visinterp.report.run_json import find_run_folder, read_run

STATE_RGB = "31,119,180"  # carried state: blue, its opacity the feature's value
REGION_RGB = ("148,103,189", "44,160,44", "255,127,14", "140,86,75", "227,119,194", "127,127,127")


def _token_text(piece: str) -> str:
    return html.escape(piece.replace("\n", "\u21b5").replace("\t", "\u21e5")) or "\u2205"


class LLMRunView:
    """Everything `visinterp llm-compare --out FOLDER` left, in the held-out windows' order.
    Activations and codes are at positions 1..T-1 of each window (position 0 is never SAE data)."""

    def __init__(self, folder: str | Path):
        self.out = find_run_folder(folder)
        self.run = read_run(self.out, "llm")
        self.result = read_json_object(self.out / "comparison.json", "comparison")
        self.cfg = llm_config_from_dict(read_json_object(self.out / "config.json", "run config"),
                                        str(self.out / "config.json"))
        windows = load_windows(self.out)
        store = ActivationStore(self.out / self.run["store"])
        held = torch.tensor(self.run["held_out_windows"])
        self.axis = ContextAxis.from_dict(self.run["axis"], str(self.out / "run.json"))
        self.x = store.gather(held)  # (N, T-1, d)
        rows = store.image_index()[held]
        self.ids = windows.ids[rows]  # (N, T), position 0 included
        self.region = windows.region[rows][:, 1:]
        self.boundaries = windows.boundaries()[rows][:, 1:]
        self.regions = windows.regions
        self._tokenizer = None

    @property
    def saes(self) -> dict[str, dict]:
        """comparison.json's row per SAE."""
        return self.result["saes"]

    @cache
    def sae(self, name: str) -> BaseSAE:
        """The SAE `name`, loaded once, in eval mode."""
        if name not in self.saes:
            raise InputError(f"no SAE {name!r} in {self.out}: choose from {', '.join(self.saes)}")
        return load_sae(self.out / self.run["saes"][name]["folder"])[0].eval()

    @cache
    def codes(self, name: str) -> dict[str, Tensor]:
        """{"x_hat", "innovations", "state"} on the held-out windows, (N, T-1, ·)."""
        return window_codes(self.sae(name), self.x, self.axis, self.run["saes"][name]["shuffle"], self.run["seed"])

    def tokens(self, window: int) -> list[str]:
        """The window's tokens at the SAE positions 1..T-1, as text."""
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.cfg.model)
        return [self._tokenizer.decode([int(i)]) for i in self.ids[window, 1:]]

    def analysed(self) -> tuple[str, str, str]:
        """(contextual SAE at the middle budget of the config's first carry, its control, the
        per-position SAE nearest its FVU): the trio the report's strips and contexts show."""
        per_pos, name = analysed_pair(self.saes, f"contextual_{self.cfg.sweep.carries[0]}")
        return name, f"{name}_control", per_pos

    def region_features(self, name: str) -> dict[str, int]:
        """The best feature for each region label (by AUROC of its state)."""
        return dict(self.saes[name]["best_feature_by_region"])

    def pareto_figure(self):
        """L0 vs held-out FVU and L0 vs delta CE, every series (controls grey, dashed)."""
        fig, axes = pyplot().subplots(1, 2, figsize=(10, 3.9))
        pareto_panel(axes[0], self.saes, "fvu", "held-out FVU", "L0 (innovations per token)", legend=False)
        dce = [m["delta_ce"] for m in self.saes.values()]
        pareto_panel(axes[1], self.saes, "delta_ce", "delta CE, spliced - clean (nats)", "L0 (innovations per token)",
                     log_y=min(dce) > 0, legend=False)
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=3, fontsize=8, frameon=False)
        fig.suptitle(f"{self.result['model']}, {self.result['hook']}, T = {self.result['window']}", fontsize=9)
        return fig

    def curves_figure(self):
        """Held-out FVU against training tokens, every SAE (dashed: not converged)."""
        fig, ax = pyplot().subplots(figsize=(8, 3.8))
        learning_curve_panel(ax, self.saes, f"{self.result['model']}, {self.result['hook']}")
        fig.tight_layout()
        return fig

    def windows_with_boundaries(self, n: int = 3) -> list[int]:
        """Held-out windows with the most region boundaries (ties: the earlier window)."""
        count = self.boundaries.sum(1)
        return sorted(range(len(count)), key=lambda i: (-int(count[i]), i))[:n]

    def strip_features(self, name: str, window: int, n: int = 3) -> list[int]:
        """The SAE's best feature per region label that is on in the window, then the features on
        at the most tokens of the window, n in all."""
        on = (self.codes(name)["state"][window] > 0).sum(0)
        ranked = [f for f in self.region_features(name).values() if on[f] > 0] + on.argsort(descending=True).tolist()
        return list(dict.fromkeys(ranked))[:n]

    def strip_html(self, name: str, window: int, features: list[int] | None = None) -> str:
        """Token strips of one held-out window for SAE `name` (default features: strip_features):
        per feature, the carried state
        shaded blue (opacity = value / the feature's max in the window) with the tokens where it
        was paid for (an innovation) underlined black; then all features' innovation counts. A
        red bar opens each region, and each token's region colours its top edge."""
        features = self.strip_features(name, window) if features is None else features
        codes = self.codes(name)
        state, innov = codes["state"][window], codes["innovations"][window]
        tokens, region, starts = self.tokens(window), self.region[window], self.boundaries[window]
        lines = []
        for f in dict.fromkeys(features):
            top = float(state[:, f].max()) or 1.0
            cells = []
            for t, piece in enumerate(tokens):
                a = max(0.0, float(state[t, f])) / top
                paid = float(innov[t, f]) != 0
                style = (f"background:rgba({STATE_RGB},{a:.2f});border-top:3px solid rgb({REGION_RGB[int(region[t]) % 6]})"
                         + (";box-shadow:inset 0 -3px 0 #000" if paid else ""))
                cells.append(f'<span class="{"bd" if starts[t] else ""}" style="{style}" '
                             f'title="{html.escape(self.regions[int(region[t])])}: state {float(state[t, f]):.3f}'
                             f'{", paid here" if paid else ""}">{_token_text(piece)}</span>')
            n_paid = int((innov[:, f] != 0).sum())
            n_on = int((state[:, f] > 0).sum())
            lines.append(f"<div class=note>feature {f}: on at {n_on} tokens, paid for at {n_paid}</div>"
                         f"<div class=strip>{''.join(cells)}</div>")
        counts = (innov != 0).sum(-1)
        peak = max(int(counts.max()), 1)
        cells = [f'<span class="{"bd" if starts[t] else ""}" style="background:rgba(214,39,40,{int(c) / peak:.2f})" '
                 f'title="{int(c)} innovations, state {int((state[t] > 0).sum())}">{_token_text(p)}</span>'
                 for t, (p, c) in enumerate(zip(tokens, counts))]
        lines.append(f"<div class=note>all features: innovations per token (red, max {peak}); mean state "
                     f"{float((state > 0).sum(-1).float().mean()):.1f} features read per token</div>"
                     f"<div class=strip>{''.join(cells)}</div>")
        return f"<div><b>{html.escape(name)}</b>, held-out window {window}</div>" + "".join(lines)

    def legend_html(self) -> str:
        """The legend of the token strips' colours, as HTML."""
        regions = "".join(f'<span style="border-top:3px solid rgb({REGION_RGB[i % 6]})">{html.escape(r)}</span>'
                          for i, r in enumerate(self.regions))
        return (f"<p class='note legend'>Regions (token top edge): {regions} "
                f"<span class=bd>region boundary</span> <span style='background:rgba({STATE_RGB},0.6)'>state</span>"
                "<span style='box-shadow:inset 0 -3px 0 #000'>paid for here</span></p>")

    @staticmethod
    def show(*parts: str):
        """HTML parts (strips, contexts, legend) as one notebook output, with the report's styles."""
        from IPython.display import HTML

        return HTML(f"<style>{CSS}</style>" + "".join(parts))

    def top_contexts(self, name: str, feature: int, n: int = 8, before: int = 12, after: int = 3) -> list[dict]:
        """The n held-out tokens where the feature's state is largest (at most one per window):
        window, position, value, whether it was paid for there, and the text around it."""
        state = self.codes(name)["state"][..., feature]
        innov = self.codes(name)["innovations"][..., feature]
        best, where = state.max(1)
        out = []
        for w in best.argsort(descending=True)[:n].tolist():
            if best[w] <= 0:
                break
            t = int(where[w])
            tokens = self.tokens(w)
            out.append({"window": w, "position": t + 1, "value": float(best[w]), "paid": bool(innov[w, t] != 0),
                        "region": self.regions[int(self.region[w, t])],
                        "before": "".join(tokens[max(0, t - before) : t]), "token": tokens[t],
                        "after": "".join(tokens[t + 1 : t + 1 + after])})
        return out

    def top_contexts_html(self, name: str, feature: int, n: int = 8) -> str:
        """`top_contexts` as an HTML table."""
        rows = self.top_contexts(name, feature, n)
        if not rows:
            return f"<p class=note>{html.escape(name)} feature {feature} never fires on the held-out windows.</p>"
        body = "".join(
            f"<tr><td>{r['value']:.3f}{' (paid)' if r['paid'] else ''}</td><td>{html.escape(r['region'])}</td>"
            f"<td style='text-align:left' class=strip>{_token_text(r['before'])}<b style='background:rgba({STATE_RGB},0.5)'>"
            f"{_token_text(r['token'])}</b>{_token_text(r['after'])}</td></tr>" for r in rows)
        return (f"<div><b>{html.escape(name)}</b> feature {feature}</div><table><thead><tr><th>state</th><th>region</th>"
                f"<th>context (token in bold)</th></tr></thead><tbody>{body}</tbody></table>")
