"""report.html of `visinterp llm-compare`: one self-contained page with the L0-FVU and
L0-delta-CE Pareto plots (controls beside), the goal check at matched FVU, a table at matched
L0, token strips of innovations vs carried state over real text with region boundaries, and
top-activating contexts per feature."""

from __future__ import annotations

import html
from pathlib import Path

from visinterp.analysis.matched_l0 import CONTROL_KEEPS, verdict
from visinterp.llm.view import LLMRunView
from visinterp.report.page import converged_cell, png, table, write_page


def _fmt(v) -> str | float:
    return "-" if v is None else v


def ceiling_line(saes: dict) -> str:
    """The persistence ceiling in one sentence: the most a carry could save, per per-position TopK SAE."""
    rows = [(n, m["persistence"]) for n, m in saes.items() if m.get("series") == "topk" and "persistence" in m]
    if not rows:
        return ""
    parts = ", ".join(f"{n} {p['best_innovation_ratio']:.2f}x ({p['persistent_fraction']:.0%} of its active features "
                      f"were active the token before)" for n, p in rows)
    return f"Persistence ceiling, the best innovation ratio any carry could reach: {parts}."


def _baselines(r: dict) -> list[str]:
    """The null baselines and the persistence ceiling, beside the verdict."""
    out = []
    if "baselines" in r:
        b = r["baselines"]
        out += ["<h3>What the activations give away without an SAE</h3>",
                table([["token's mean activation (unigram null)", b["unigram"]],
                       ["previous token's activation", b["previous_1"]],
                       ["mean of the previous 4 tokens", b["previous_4"]]], ["prediction", "held-out FVU"]),
                "<p class=note>Each held-out activation predicted from its token alone (the mean over the training "
                "windows) or from the activations before it, over positions 1.. of each window. An SAE's FVU counts "
                "against these.</p>"]
    rows = [[n, m["l0"], m["fvu"], m["persistence"]["persistent_fraction"], m["persistence"]["mean_run_length"],
             m["persistence"]["best_innovation_ratio"]] for n, m in r["saes"].items() if "persistence" in m]
    if rows:
        out += ["<h3>Persistence ceiling: what a carry could save at most</h3>",
                table(rows, ["per-position SAE", "L0", "FVU", "active the token before", "mean run (tokens)",
                             "best innovation ratio"]),
                f"<p class=note>{html.escape(ceiling_line(r['saes']))} A contextual SAE that pays only for features "
                "that were off the token before reaches at most this ratio against the per-position SAE's L0.</p>"]
    return out


def _subtract_note(r: dict) -> list[str]:
    """What the SAEs were trained on, when it was not the raw activations."""
    if r.get("subtract", "none") == "none":
        return []
    return [f"<p class=note><b>Every SAE coded the activations minus the unigram table</b> (each token's mean "
            f"activation over the training windows, held-out FVU {r['baselines']['unigram']:.3f} on its own). FVU "
            "and delta CE below are of the raw activations, rebuilt as the SAE's output plus the table; 'FVU of the "
            "residual' is of what the SAE coded. Learning curves are on the residual.</p>"]


def write_report(view: LLMRunView) -> Path:
    """Write report.html (and figures/*.png) of a finished llm-compare folder."""
    out, r = view.out, view.result
    figures = out / "figures"
    ctx, control, per_pos = view.analysed()
    parts = [f"<h1>Per-position vs contextual SAEs: {html.escape(out.resolve().name)}</h1>",
             f"<p class=note>Model <b>{html.escape(r['model'])}</b>, hook <b>{html.escape(r['hook'])}</b>.</p>",
             f"<p class=note>Windows of {r['window']} tokens (position 0 never enters an SAE); "
             f"{r['windows_harvested']} harvested, {r['windows_left_out_as_outliers']} left out for a massive "
             f"activation after position 0, {r['held_out_windows']} held out for everything below. CE over the "
             + (f"first {r['ce_windows']} held-out windows' tokens" if r.get("ce_windows", r["held_out_windows"])
                < r["held_out_windows"] else "held-out tokens")
             + f": clean {r['ce_clean']:.3f}, hook zero-ablated {r['ce_zero_ablation']:.3f} nats.</p>",
             *_subtract_note(r),
             "<h2>Sparsity vs reconstruction and vs CE</h2>", png(view.pareto_figure(), figures, "llm_pareto"),
             "<p class=note>L0 counts innovations (features paid for at a token); dotted lines put the contextual SAE "
             "at its state L0 (what the decoder reads). Delta CE is the spliced-in model's CE minus the clean CE. "
             "The shuffled control is the same contextual model trained and evaluated with tokens permuted within "
             "each window: a contextual gain counts only as far as the control loses it.</p>",
             "<h2>Goal: fewer innovations than per-position TopK at equal FVU</h2>",
             f"<p><b>{html.escape(verdict(r['goals']))}</b></p>", *_baselines(r)]
    rows = [[n, g["l0"], g["fvu"], g["topk_l0_at_same_fvu"], g["innovation_ratio"], "yes" if g["extrapolated"] else "",
             g["delta_ce"], _fmt(g["topk_delta_ce_at_that_l0"]), _fmt(g.get("control_fvu")),
             _fmt(g.get("control_innovation_ratio")), _fmt(g.get("control_keeps_fraction_of_gain")),
             "met" if g["goal_met"] else "not met"] for n, g in r["goals"].items()]
    parts += [table(rows, ["contextual SAE", "L0", "FVU", "TopK L0 at that FVU", "innovation ratio", "extrapolated",
                           "delta CE", "TopK delta CE there", "control FVU", "control ratio", "control keeps",
                           "goal (>= 1.5x)"]),
              "<p class=note>TopK values are interpolated between the TopK sweep's points in log-log space "
              "(extrapolated from the nearest segment where marked). 'Control keeps' is log(control ratio) / "
              f"log(ratio): below {CONTROL_KEEPS} the control loses at least {1 - CONTROL_KEEPS:.0%} of the gain.</p>",
              "<h2>At matched L0</h2>"]
    series = list(dict.fromkeys(m["series"] for m in r["saes"].values()))
    def cell(row, s):
        fvu, dce = row[f"{s}/fvu"], row[f"{s}/delta_ce"]
        return "-" if fvu is None else f"{fvu:.3f} / {dce:.3f}" if dce is not None else f"{fvu:.3f} / -"
    rows = [[s, *[cell(row, s) for row in r["matched_l0"]]] for s in series]
    parts += [table(rows, ["series", *[f"L0 {row['l0']:.2f}: FVU / dCE" for row in r["matched_l0"]]]),
              "<p class=note>Each series interpolated at the contextual SAEs' L0 (FVU log-log; delta CE against log L0, or log-log when positive throughout); '-' where a series does "
              "not reach that L0.</p>", "<h2>Every SAE</h2>"]
    rows = [[n, m["series"], m["l0"], m["state_l0"], m["fvu"], m["delta_ce"], m["ce_recovered"], m["dead_fraction"],
             converged_cell(m), *[m["best_auroc_by_region"].get(g, float("nan")) for g in r["regions"]],
             m["n_region_tracking_features"], m["switch_rate_of_region_tracking_features"],
             m["innovations_near_boundary"]] for n, m in r["saes"].items()]
    residual = [m.get("fvu_residual") for m in r["saes"].values()]
    if any(v is not None for v in residual):
        rows = [[*row[:5], _fmt(v), *row[5:]] for row, v in zip(rows, residual)]
    near = next(iter(r["saes"].values()))["positions_near_boundary"]
    parts += [table(rows, ["SAE", "series", "L0", "state L0", "FVU", *(["FVU of the residual"] if any(
                               v is not None for v in residual) else []), "delta CE", "CE recovered", "dead", "converged",
                           *[f"AUROC {g}" for g in r["regions"]], "region-tracking features",
                           "their switch rate", "innovations near boundary"]),
              f"<p class=note>AUROC: the best single feature's state against each region label, one label against the "
              f"rest. Region-tracking features are those whose best AUROC reaches 0.75; their switch rate is how often "
              f"they turn on or off inside a region ('-' where an SAE has none). Innovations near boundary: the share "
              f"of innovations within 2 tokens of a region boundary; {near:.1%} of tokens are that near.</p>",
              "<h2>Learning curves</h2>", png(view.curves_figure(), figures, "llm_learning_curves"),
              "<p class=note>Held-out FVU against training tokens; dashed: not converged (FVU still improving by 2% "
              "or more over the last quarter of the tokens).</p>",
              "<h2>Token strips: what is paid for vs what is carried</h2>", view.legend_html(),
              "<p class=note>Features: each SAE's best feature per region label that is on in the window, then the "
              f"features on at the most tokens. The contextual SAE {ctx} "
              f"should pay for a region's feature once, near the region's start, and carry it; the per-position "
              f"{per_pos} (nearest in FVU) and the control {control} pay wherever the feature is on.</p>"]
    for w in view.windows_with_boundaries(2):
        parts += [view.strip_html(name, w) for name in (ctx, control, per_pos)]
    parts.append("<h2>Top-activating contexts</h2>")
    for name in (ctx, per_pos):
        for region, f in view.region_features(name).items():
            parts += [f"<h3>{html.escape(name)} feature {f} (best for {html.escape(region)})</h3>",
                      view.top_contexts_html(name, f)]
    return write_page(out / "report.html", f"llm-compare: {out.resolve().name} ({r['hook']})", parts)
