r"""The converged image comparison: per-position TopK against the gated contextual SAE and its
shuffled control on an image autoencoder's maps, by default the real TAEF2 weights at 256 px
(32 x 32 latent maps) under the default recipe, 8M positions per SAE
(`configs/image/taef2_converged_256_8m.toml`; `configs/image/taef2_converged_256.toml` is the
earlier run, with the carry loss and 4M positions), at each hook of the config (`latent`,
`encoder.mid`), with every SAE's learning rate chosen by a sweep and the headline budget repeated
over seeds.

First the harvest, once, into `<runs>/harvest` (the rendered scenes and one activation store per
hook). Then per hook, each stage a `visinterp run` on that hook alone in `<runs>/<hook>/<stage>`,
reading the harvest through hard links (a stage whose metrics.json exists is read back, so the
script resumes; a stage folder of another config is refused; with `--keep-stages DIR` each finished
stage's metrics.json and config.json are copied to DIR as well, and read from there on a checkout
whose runs folder lacks them):

1. `lr<rate>`: TopK, the contextual SAE and its control at the headline k, once per rate; each
   series keeps the lowest held-out FVU among its converged runs (the lowest overall, marked,
   when none converged); the control trains at the contextual SAE's rate;
2. `k_topk`, `k_contextual`: the other budgets at the chosen rates;
3. `seed<s>`: the headline budget again with other seeds (a seed draws the SAEs' initialisation,
   batch order and held-out images), for the spread.

The goals (`visinterp.analysis.matched_l0.goals`, with the PSNR of the held-out images decoded
from the SAE's reconstruction against TopK's at the same L0 in place of delta CE) are scored on
seed 0's SAEs, with the persistence ceiling of each TopK SAE along the raster scan beside them,
and the headline contextual SAE's within-object switch rate against TopK's at the same k (goal:
at most half; `visinterp.analysis.localization.switch_comparison`), taken over each SAE's
object features (the best feature for each object kind, material, texture, and for object against
background; `visinterp.image.factors.feature_alignment`), the rate over all live features beside it.
Writes JSON and a plot (per hook: FVU against L0, learning curves).

    python benchmarks/image_converged.py --out benchmarks/results/image_converged_taef2_256_8m.json

`--variant` runs an ablation: the same procedure with the contextual SAEs and controls changed,
their stages in `<runs>/<hook>-<variant>/`, against the plain run's TopK SAEs (read back from
`<runs>/<hook>/`); the docs' results page sets its JSON beside the plain run's, and lists the
committed ones with the budgets and seeds each ran. Several join with '+' (`--variant
carry_freeze+no_anneal`: the fields of both, in `<hook>-carry_freeze+no_anneal/`). `signed`:
signed innovations (`ContextualConfig.signed`); `position_gates`: persistence that also reads the
step's position (`ContextualConfig.position_gates`); `no_anneal`: no budget anneal (trained at k from
the first step, `[sweep] k_anneal_fraction = 0`); `no_carry_loss`: no carry loss (`[sweep]
carry_coeff = 0`); `cap`: at most 4k innovations a position, the largest (`[sweep] max_per_position = 4`);
`carry_freeze`: the carry's parameters stop training where the rate decays (`[sweep] carry_freeze_at_decay`).

    python benchmarks/image_converged.py --config configs/image/taef2_converged_256.toml \
        --variant signed --hooks latent --seeds 1 --out benchmarks/results/image_converged_taef2_256_signed.json
    python benchmarks/image_converged.py --hooks encoder.mid --variant signed --headline-only --seeds 1 \
        --keep-stages benchmarks/results/stages/taef2_converged_256_8m \
        --out benchmarks/results/image_converged_taef2_256_8m_encoder_mid_signed.json
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from ctxsae_common.errors import InputError
from ctxsae_common.files import write_json_atomic
from visinterp.analysis.localization import switch_comparison
from visinterp.image.config import load_run_config
from visinterp.image.run import ImageJob, run
from scenes.figures import pyplot, save_figure
from machine import machine_info  # benchmarks/machine.py: run as python benchmarks/<name>.py
import stages

ROOT = Path(__file__).resolve().parents[1]
QUALITY = "psnr_vs_clean_decode"
# an analysed SAE's within-object switch rates, from the factor alignment: of its object features
# (the goal's; `visinterp.image.factors.feature_alignment`) and of all its live features
SWITCH, SWITCH_LIVE = "switch_rate_of_object_features", "within_object_switch_rate"
SWITCH_FIELDS = (SWITCH, "object_label_auroc", SWITCH_LIVE)
KEPT = (*stages.KEPT, QUALITY, "psnr_vs_input", *SWITCH_FIELDS)
HARVEST = ("scenes", "store")  # what of a run folder the stages share (a folder of photos has no scenes/)


def rows_with_switch_rates(found: dict, hook: str) -> dict[str, dict]:
    """A stage's SAE rows by their name at the hook, each SAE the stage analysed against the scenes'
    truth (the report's pair and the control) with its within-object switch rates added (a stage
    reported before the object features' rate was measured gives the live features' rate alone)."""
    aligned = found.get("alignment", {}).get(hook, {})
    rows = {n.split("/", 1)[1]: m for n, m in found["saes"].items()}
    return {n: m | {f: aligned[n][f] for f in SWITCH_FIELDS if f in aligned.get(n, {})} for n, m in rows.items()}


def plot(result: dict, path: Path) -> None:
    """Per hook, a row: held-out FVU against L0, and every seed-0 SAE's learning curve."""
    hooks = result["hooks"]
    fig, axes = pyplot().subplots(len(hooks), 2, figsize=(12, 4.2 * len(hooks)), squeeze=False)
    for (left, right), (hook, found) in zip(axes, hooks.items()):
        stages.draw_comparison(left, right, found["saes"], "patch", "patches")
        left.set_title(hook)
        left.legend(fontsize=8)
    variant = f", contextual SAEs: {result['variant']}" if result.get("variant") else ""
    fig.suptitle(f"{result['autoencoder']['autoencoder']}: converged comparison (seed 0{variant})", y=1.0)
    fig.subplots_adjust(hspace=0.35)
    save_figure(fig, path)


def stage_runner(cfg, args: argparse.Namespace) -> stages.Stages:
    """The stages' runner on the harvest in `<args.runs>/harvest` (rendered and harvested before
    the first stage that trains, where missing: stages read back from `--keep-stages` need none),
    each stage a `visinterp run` (`args`: runs, device, jobs, keep_stages, no_progress), every
    stage on one autoencoder. The runner raises InputError where the harvest cannot be made, or
    where its autoencoder is not the one the stages before were harvested from."""
    progress = not args.no_progress
    harvest = args.runs / "harvest"

    def prepare() -> dict:  # renders and harvests what is missing; the autoencoder harvested from
        job = ImageJob(cfg, harvest, progress, args.device)
        job.harvest()
        return job.ae.metadata()
    return stages.Stages(lambda c, out: run(c, out, progress=progress, device=args.device, jobs=args.jobs),
                         "metrics.json", HARVEST, args.runs, harvest, record=lambda c: c.to_dict(),
                         kept=args.keep_stages, prepare=prepare, source=lambda result: result["autoencoder"])


def at_hook(cfg, hook: str):
    """The config harvesting and training at `hook` alone (a stage's config)."""
    return dataclasses.replace(cfg, harvest=dataclasses.replace(cfg.harvest, hooks=(hook,)))


def hook_stage(runner: stages.Stages, cfg, hook: str, variant: str | None = None, plain_folder: str | None = None,
               variant_folder: str | None = None):
    """A stage function at `hook` (`stages.converged_comparison`'s `stage`): each stage run by
    `runner` in `<plain_folder>/<stage>` (default: the hook's name), its rows with their switch
    rates; with an ablation `variant`, the contextual SAEs and controls in `<variant_folder>/<stage>`
    (default `<hook>-<variant>`) against the plain folder's per-position SAEs (`stages.ablated`)."""
    def in_folder(folder: str):
        def stage(name: str, may_diverge: bool = False, **sweep) -> dict:
            found = runner(f"{folder}/{name}", at_hook(cfg, hook), may_diverge, **sweep)
            return {**found, "saes": rows_with_switch_rates(found, hook)}
        return stage
    plain = in_folder(plain_folder or hook)
    if variant is None:
        return plain
    return stages.ablated(plain, in_folder(variant_folder or f"{hook}-{variant}"), stages.variant_fields(variant),
                          cfg.sweep)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=ROOT / "configs/image/taef2_converged_256_8m.toml")
    p.add_argument("--out", type=Path, default=None, help="the JSON (default: runs/<config name>.json)")
    p.add_argument("--runs", type=Path, default=None,
                   help="the harvest and the stages' run folders (default: runs/<config name>)")
    p.add_argument("--hooks", type=lambda text: tuple(h.strip() for h in text.split(",")), default=None,
                   help="only these of the config's hooks, comma-separated (default: all of them)")
    stages.add_arguments(p, headline_k=4)
    args = p.parse_args(argv)
    try:
        cfg = load_run_config(args.config)
    except InputError as e:
        p.error(str(e))
    stages.check_arguments(p, args, cfg.sweep)
    args.runs = args.runs or Path("runs") / args.config.stem
    args.out = args.out or Path("runs") / f"{args.config.stem}.json"
    hooks_run = args.hooks or cfg.harvest.hooks
    if not set(hooks_run) <= set(cfg.harvest.hooks):
        p.error(f"--hooks {','.join(hooks_run)}: choose among the config's hooks {', '.join(cfg.harvest.hooks)}")
    start = time.perf_counter()
    runner = stage_runner(cfg, args)  # the harvest is made, and its errors raised, by the first stage that trains

    hooks, first = {}, None
    for hook in hooks_run:
        try:
            found = stages.converged_comparison(hook_stage(runner, cfg, hook, args.variant), cfg.sweep.k,
                                                stages.contextual_budgets(args, cfg.sweep), args.headline_k, args.lr,
                                                args.seeds, KEPT, QUALITY, higher_is_better=True,
                                                quality_label="decoded-image PSNR")
        except InputError as e:
            p.error(str(e))
        rate = SWITCH if any(SWITCH in m for m in found["saes"].values()) else SWITCH_LIVE  # older stages: live only
        found["localization"] = switch_comparison(found["saes"], rate, f"{stages.CONTEXTUAL}_k{args.headline_k}",
                                                  f"{stages.TOPK}_k{args.headline_k}")
        rate_runs = found.pop("rate_runs")
        first = first or rate_runs[found["chosen"]["topk"]["lr"]]
        hooks[hook] = found
        print(f"\n== {hook} ==")
        stages.print_comparison(found, QUALITY, "PSNR")
        if found["localization"]:
            loc = found["localization"]
            print(f"within-object switch rate ({loc['rate']}): {loc['contextual']} {loc['contextual_rate']:.4f}, {loc['reference']} "
                  f"{loc['reference_rate']:.4f}: {loc['ratio']:.2f}x (goal <= {loc['max_ratio']}x)")

    result = {"autoencoder": first["autoencoder"], "images": first["images"], "n_images": first["n_images"],
              "held_out_images": len(first["held_out_images"]), "axis": first["axis"], "tile": first["tile"],
              "autoencoder_psnr_vs_input": first["autoencoder_psnr_vs_input"], "config": cfg.to_dict(),
              "quality": QUALITY, "variant": args.variant, "headline_only": args.headline_only, "hooks": hooks,
              "seconds": time.perf_counter() - start, "stage_seconds": runner.seconds, "machine": machine_info()}
    write_json_atomic(args.out, result)
    plot(result, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
