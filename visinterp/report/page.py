"""What every self-contained report page shares: figures embedded as PNG (and kept under
figures/), tables, the page shell, and the sparsity Pareto panel drawn per sweep series."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

from ctxsae_common.files import write_text_atomic
from scenes.figures import save_figure

CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f3f3f3}img{max-width:100%;margin:0.5em 0}.note{color:#555;font-size:13px}
.strip{font-family:ui-monospace,monospace;font-size:12px;line-height:2.1;white-space:pre-wrap;margin:0.4em 0}
.strip span{padding:1px 0}.strip .bd{border-left:3px solid #d62728}.legend span{padding:1px 6px;margin-right:6px}"""

# Per-position sweeps in blues and greens, contextual in warm colours, controls grey with the
# contextual series' marker, so a control sits visibly beside the model it controls.
SERIES_STYLE = {"topk": ("tab:blue", "o"), "batchtopk": ("tab:cyan", "^"), "jumprelu": ("tab:green", "D"),
                "contextual_gated": ("tab:red", "s"), "contextual_attention": ("tab:orange", "P")}


def series_style(series: str) -> tuple[str, str, str]:
    """(colour, marker, line style) of a sweep series."""
    base = series.removesuffix("_control")
    colour, marker = SERIES_STYLE.get(base, ("tab:purple", "v"))
    return ("tab:gray", marker, "--") if series.endswith("_control") else (colour, marker, "-")


def series_label(series: str) -> str:
    """A series' name as a legend shows it."""
    return series.replace("_control", ", shuffled control").replace("contextual_", "contextual ")


def pareto_panel(ax, saes: dict[str, dict], y: str, ylabel: str, xlabel: str, log_y: bool = True,
                 legend: bool = True) -> None:
    """One point per SAE at (L0, saes[name][y]), joined per series; contextual series also
    drawn dotted at their state L0 (what the decoder reads)."""
    for series in dict.fromkeys(m["series"] for m in saes.values()):
        colour, marker, ls = series_style(series)
        pts = sorted((m["l0"], m[y], m["state_l0"]) for m in saes.values() if m["series"] == series)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, color=colour, ls=ls, label=series_label(series))
        if series.startswith("contextual") and not series.endswith("_control"):
            ax.plot([p[2] for p in pts], [p[1] for p in pts], marker=marker, color=colour, ls=":", mfc="none",
                    label=f"{series_label(series)}, state L0")
    ax.set_xscale("log")
    label_log_axis(ax.xaxis)
    if log_y:
        ax.set_yscale("log")
        label_log_axis(ax.yaxis)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, which="both")
    if legend:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


def _thousands():
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda v, _: f"{v / 1e6:g}M" if abs(v) >= 1e6 else f"{v / 1e3:g}k" if abs(v) >= 1e3 else f"{v:g}")


def label_log_axis(axis) -> None:
    """Plain-number labels on a log axis of the data drawn so far (matplotlib's default labels only
    powers of ten, so a span such as L0 2-40 shows one '10' or none): at 1, 2 and 5 of each decade
    over a decade or more, more steps on shorter spans, so at least two labels show (with fewer,
    matplotlib falls back to linear ticks, eleven of them on FVU 0.11-0.33)."""
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    axis.axes.autoscale_view()
    lo, hi = sorted(axis.get_view_interval())
    decades = math.log10(hi / lo) if lo > 0 else 1.0
    subs = (1.0, 2.0, 5.0) if decades >= 1 else (1.0, 2.0, 3.0, 5.0, 7.0) if decades >= 0.4 else tuple(range(1, 10))
    axis.set_major_locator(LogLocator(base=10, subs=subs))
    axis.set_major_formatter(FormatStrFormatter("%g"))
    axis.set_minor_formatter(NullFormatter())


def converged_cell(m: dict) -> str:
    """A table cell saying whether an SAE converged: 'yes', 'no (improved / rose N% in the last quarter)' or '-'."""
    c, gain = m.get("converged"), m.get("fvu_gain_last_quarter")
    if c is None:
        return "-"
    if c:
        return "yes"
    return f"no (improved {gain:.0%} in the last quarter)" if gain > 0 else f"no (rose {-gain:.0%} in the last quarter)"


def learning_curve_panel(ax, saes: dict[str, dict], title: str = "") -> None:
    """Held-out FVU against training tokens, one line per SAE (its `curve`), styled by series;
    an SAE that did not converge (FVU still falling by 2% or more over the last quarter) is
    drawn dashed and named in the legend; so is one whose FVU rose as much (unstable)."""
    for name, m in saes.items():
        curve = m.get("curve") or []
        if not curve:
            continue
        colour, marker, ls = series_style(m["series"])
        unconverged = m.get("converged") is False
        why = " (rose)" if unconverged and (m.get("fvu_gain_last_quarter") or 0) < 0 else " (not converged)"
        ax.plot([p["tokens"] for p in curve], [p["fvu"] for p in curve], color=colour, ls="--" if unconverged else ls,
                marker=marker, ms=3, lw=1, label=f"{name.split('/')[-1]}{why if unconverged else ''}")
    ax.set_xlabel("training tokens")
    ax.set_ylabel("held-out FVU")
    ax.set_yscale("log")
    label_log_axis(ax.yaxis)
    ax.xaxis.set_major_formatter(_thousands())
    ax.grid(alpha=0.3, which="both")
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


def png(fig, figures: Path, name: str) -> str:
    """Save the figure under figures/ and return an <img> tag embedding the same PNG."""
    path = figures / f"{name}.png"
    save_figure(fig, path)
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(name)}">'


def table(rows: list[list], header: list[str]) -> str:
    """An HTML table of rows under a header; floats with 4 significant digits, NaN as '-'."""
    def cell(v):
        if isinstance(v, float):
            return "-" if math.isnan(v) else f"{v:.4g}"
        return html.escape(str(v))
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_page(path: Path, title: str, parts: list[str]) -> Path:
    """Write a self-contained HTML page of `parts` under `title` (atomically)."""
    page = (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>")
    write_text_atomic(path, page)
    return path
