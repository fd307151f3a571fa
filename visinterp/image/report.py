"""report.html of the main job: one self-contained page (plots embedded as PNG) with the L0-FVU
Pareto plot and its control, feature galleries with heatmaps over the images, innovation vs
state maps, factor alignment, steering before/after, and the autoencoder's own errors by factor."""

from __future__ import annotations

import html
from pathlib import Path

import torch
from torch import Tensor

from scenes.figures import pyplot
from visinterp.image.steering import steer
from visinterp.report.page import converged_cell, learning_curve_panel, pareto_panel, png, table, write_page


def curves_figure(result: dict):
    """Held-out FVU against training tokens, one panel per hook, every SAE."""
    hooks = sorted({m["hook"] for m in result["saes"].values()})
    fig, axes = pyplot().subplots(1, len(hooks), figsize=(6.2 * len(hooks), 3.6), squeeze=False)
    for ax, hook in zip(axes[0], hooks):
        learning_curve_panel(ax, {n: m for n, m in result["saes"].items() if m["hook"] == hook}, hook)
    fig.tight_layout()
    return fig


def pareto_figure(result: dict):
    """L0 against held-out FVU, one panel per hook, every sweep series (controls grey, dashed)."""
    hooks = sorted({m["hook"] for m in result["saes"].values()})
    fig, axes = pyplot().subplots(1, len(hooks), figsize=(4.6 * len(hooks), 3.6), squeeze=False)
    for ax, hook in zip(axes[0], hooks):
        pareto_panel(ax, {n: m for n, m in result["saes"].items() if m["hook"] == hook}, "fvu", "held-out FVU",
                     "L0 (innovations per patch)", legend=False)
        ax.set_title(hook)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=3, fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def _overlay(ax, image: Tensor, heat: Tensor, title: str) -> None:
    ax.imshow(image.permute(1, 2, 0).numpy())
    up = torch.nn.functional.interpolate(heat[None, None], size=image.shape[-2:], mode="nearest")[0, 0]
    vmax = float(up.max()) or 1.0
    ax.imshow(up.numpy(), cmap="inferno", alpha=0.55, vmin=0, vmax=vmax)
    ax.set_title(title, fontsize=7)
    ax.axis("off")


def gallery_figure(images: Tensor, state_maps: list[Tensor], features: list[int], top: int, label: str):
    """Per feature (row), the held-out images where it is largest, its state heatmap over each."""
    plt = pyplot()
    fig, axes = plt.subplots(len(features), top, figsize=(1.6 * top, 1.75 * len(features)), squeeze=False)
    peak = torch.stack([m.amax((-2, -1)) for m in state_maps])  # (N, F)
    for row, f in enumerate(features):
        order = peak[:, f].argsort(descending=True)[:top]
        for col, i in enumerate(order.tolist()):
            _overlay(axes[row][col], images[i], state_maps[i][f], f"f{f} img{i} max {float(peak[i, f]):.2f}")
    fig.suptitle(label, fontsize=9)
    return fig


def innovation_figure(images: Tensor, innov_maps: dict[str, list[Tensor]], state_maps: dict[str, list[Tensor]], slots: list[int]):
    """Per image: the image, then for each SAE the count of innovations and of state features per patch."""
    plt = pyplot()
    names = list(innov_maps)
    fig, axes = plt.subplots(len(slots), 1 + 2 * len(names), figsize=(1.9 * (1 + 2 * len(names)), 1.9 * len(slots)),
                             squeeze=False)
    # one colour scale for every map compared, so a patch's colour means the same count everywhere
    vmax = max(float((m[i] != 0).sum(0).max()) for d in (innov_maps, state_maps) for m in d.values() for i in slots) or 1.0
    for r, i in enumerate(slots):
        axes[r][0].imshow(images[i].permute(1, 2, 0).numpy())
        axes[r][0].set_title(f"held-out image {i}", fontsize=7)
        axes[r][0].axis("off")
        for c, name in enumerate(names):
            for j, (kind, maps) in enumerate((("innovations", innov_maps), ("state", state_maps))):
                ax = axes[r][1 + 2 * c + j]
                count = (maps[name][i] != 0).sum(0).float()
                shown = ax.imshow(count.numpy(), cmap="viridis", vmin=0, vmax=vmax)
                ax.set_title(f"{name}\n{kind} (mean {float(count.mean()):.1f})", fontsize=6)
                ax.axis("off")
    bar = fig.colorbar(shown, ax=axes.ravel().tolist(), shrink=0.8, pad=0.02)
    bar.set_label("features per patch", fontsize=7)
    bar.ax.tick_params(labelsize=6)
    return fig


def steering_figure(original: Tensor, before: Tensor, after: dict[int, Tensor], slots: list[int], scale: float):
    """Per held-out image (row): the image itself, its unsteered decode, then the decode steered
    by each feature."""
    plt = pyplot()
    feats = list(after)
    fig, axes = plt.subplots(len(slots), 2 + len(feats), figsize=(1.9 * (2 + len(feats)), 1.9 * len(slots)), squeeze=False)
    for r, i in enumerate(slots):
        axes[r][0].imshow(original[i].permute(1, 2, 0).numpy())
        axes[r][0].set_title("original", fontsize=7)
        axes[r][1].imshow(before[i].permute(1, 2, 0).numpy())
        axes[r][1].set_title("decoded, unsteered", fontsize=7)
        for c, f in enumerate(feats):
            axes[r][2 + c].imshow(after[f][i].permute(1, 2, 0).numpy())
            axes[r][2 + c].set_title(f"+ feature {f} (x{scale:g})", fontsize=7)
        for ax in axes[r]:
            ax.axis("off")
    return fig


def error_figure(errors: dict[str, dict[str, float]]):
    """The autoencoder's own error per pixel by ground-truth factor value, one panel per factor."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(errors), figsize=(3.2 * len(errors), 2.8), squeeze=False)
    for ax, (factor, values) in zip(axes[0], errors.items()):
        ax.bar(list(values), [v for v in values.values()], color="tab:purple")
        ax.set_title(factor.replace("_id", ""), fontsize=8)
        ax.tick_params(axis="x", labelrotation=45, labelsize=7)
        ax.set_ylabel("MSE per pixel", fontsize=7)
    return fig


def _alignment_rows(alignment: dict) -> list[list]:
    rows = []
    names = list(alignment)
    if not names:
        return rows
    for factor, values in alignment[names[0]]["factors"].items():
        if "feature" in values:  # continuous
            rows.append([factor, "(correlation)", *[f"f{alignment[n]['factors'][factor]['feature']}: "
                                                    f"{alignment[n]['factors'][factor]['correlation']:+.2f}" for n in names]])
            continue
        for value in values:
            rows.append([factor.replace("_id", ""), value, *[
                f"f{alignment[n]['factors'][factor][value]['feature']}: {alignment[n]['factors'][factor][value]['auroc']:.2f}"
                if value in alignment[n]["factors"].get(factor, {}) else "-" for n in names]])
    return rows


def write_report(job, result: dict, hook_data: dict) -> Path:
    """Write out/report.html (and out/figures/*.png) for an `ImageJob` and its `HookData` per hook."""
    out = job.out
    figures = out / "figures"
    parts = [f"<h1>Contextual SAEs: {html.escape(out.resolve().name)}</h1>",
             f"<p class=note>Autoencoder: <b>{html.escape(result['autoencoder']['autoencoder'])}</b> "
             f"(family {html.escape(result['autoencoder']['family'])}, {result['autoencoder']['latent_channels']} latent "
             f"channels, latents stored unscaled; scaling factor {result['autoencoder']['scaling_factor']}). "
             f"Images: {html.escape(str(result['images']))}, {len(result['held_out_images'])} held out. "
             f"Context axis: {result['axis']}. Autoencoder round trip on the held-out images: "
             f"{result['autoencoder_psnr_vs_input']:.2f} dB.</p>",
             "<h2>Sparsity vs reconstruction</h2>", png(pareto_figure(result), figures, "pareto"),
             "<p class=note>L0 counts innovations (what is paid for); state L0 counts what the decoder reads "
             "(exact non-zeros). The shuffled control is the same contextual model trained and evaluated with patches "
             "permuted within each window: a contextual SAE's gain counts only as far as the control loses it.</p>"]
    rows = [[m["hook"], name.split("/", 1)[1], m["family"], m["l0"], m["state_l0"], m["fvu"], m["dead_fraction"],
             m["psnr_vs_clean_decode"], m["psnr_vs_input"], converged_cell(m)] for name, m in result["saes"].items()]
    parts.append(table(rows, ["hook", "SAE", "family", "L0", "state L0", "FVU", "dead", "PSNR vs clean decode (dB)",
                               "PSNR vs input (dB)", "converged"]))
    parts += ["<h2>Learning curves</h2>", png(curves_figure(result), figures, "learning_curves"),
              "<p class=note>Held-out FVU against training tokens. A run has converged when its FVU improved by "
              "less than 2% over the last quarter of its tokens; dashed lines (and 'no' in the table) have not, so "
              "their figures are not yet a verdict.</p>"]
    images = job.held_images
    for hook, data in hook_data.items():
        parts.append(f"<h2>Hook {html.escape(hook)}</h2>")
        parts += _hook_sections(job, result, hook, data, images, figures)
    if "autoencoder_error_by_factor" in result:
        parts += ["<h2>Where the autoencoder's own errors fall</h2>",
                  png(error_figure(result["autoencoder_error_by_factor"]), figures, "autoencoder_errors"),
                  "<p class=note>Mean squared error per pixel of decode(encode(image)) against the render, by the "
                  "ground-truth factor of each pixel.</p>"]
    return write_page(out / "report.html", f"visinterp run: {out.resolve().name}", parts)


def _hook_sections(job, result, hook, data, images, figures) -> list[str]:
    cfg = job.cfg
    if not result["analysed"][hook]:
        return ["<p class=note>The maps, galleries and steering below need a per-position and a contextual SAE; "
                "this sweep trained only one of them.</p>"]
    per_pos, ctx = result["analysed"][hook]
    state_maps = {n: data.maps(n, "state") for n in (per_pos, ctx)}
    innov_maps = {n: data.maps(n, "innovations") for n in (per_pos, ctx)}
    slug = hook.replace(".", "_")
    parts = [f"<p class=note>Analysed pair: contextual <b>{ctx}</b> and the per-position SAE nearest its FVU, "
             f"<b>{per_pos}</b>.</p>", "<h3>Innovations vs state</h3>",
             png(innovation_figure(images, innov_maps, state_maps, list(range(min(3, len(job.held))))), figures,
                  f"{slug}_innovations"),
             "<p class=note>Per patch: how many features fire new (innovations) and how many the decoder reads "
             "(state). A contextual SAE should pay for a region's features where the region starts in the scan "
             "and carry them after.</p>"]
    alignment = result["alignment"].get(hook, {})
    ctx_state = torch.cat([m.flatten(1).T for m in state_maps[ctx]])  # (positions, F)
    rate = (ctx_state > 0).float().mean(0)
    live = rate.argsort(descending=True)[: cfg.report.features].tolist()
    sections = [("most active features", live)]
    if alignment:
        unnamed = alignment[ctx]["unnamed"][: cfg.report.features]
        if unnamed:
            sections.append(("unnamed features (aligned with no known factor)", unnamed))
        parts += ["<h3>Factor alignment</h3>", table(_alignment_rows(alignment), ["factor", "value", *alignment]),
                  "<p class=note>Best single feature (state codes) per factor value: AUROC one value against the rest "
                  "(surface factors among object patches only), Pearson correlation for depth. Mean within-object "
                  "switch rate of the live features: " + ", ".join(f"{n} {a['within_object_switch_rate']:.4f}"
                                                                   for n, a in alignment.items())
                  + "; of the object features (the best feature for each kind, material, texture, and object "
                  "against background; their mean AUROC in brackets): " + ", ".join(
                      f"{n} {a['switch_rate_of_object_features']:.4f} ({a['object_label_auroc']:.2f})"
                      for n, a in alignment.items()) + ".</p>"]
    for label, feats in sections:
        parts += [f"<h3>Gallery: {label} ({ctx})</h3>",
                  png(gallery_figure(images, state_maps[ctx], feats, min(cfg.report.top_images, len(job.held)),
                                      f"{hook} {ctx}: {label}"), figures, f"{slug}_gallery_{label.split()[0]}")]
    parts += _steering(job, hook, data, ctx, ctx_state, live[:3], figures, slug)
    return parts


def _steering(job, hook, data, name, state, feats, figures, slug) -> list[str]:
    """Add each feature's decoder direction, times scale x its mean active value, at every patch of
    the hook's map, decode, and show before and after."""
    model = data.models[name]
    scale = job.cfg.report.steer_scale
    slots = list(range(min(3, len(job.held))))
    after = steer(job.ae, model, hook, job.held_images[slots], state, feats, scale)
    fig = steering_figure(job.held_images[slots], job.clean[slots], after, slots, scale)
    return ["<h3>Steering</h3>", png(fig, figures, f"{slug}_steering"),
            f"<p class=note>Each column adds one feature's decoder direction of {name}, scaled to {scale:g}x its mean "
            "active value, at every patch of the map, then decodes.</p>"]
