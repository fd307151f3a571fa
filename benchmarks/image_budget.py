r"""How the converged image comparison's SAEs converge with their budget: the headline point of
`image_converged.py` (TopK, the gated contextual SAE and its shuffled control at k 4, seed 0, on
TAEF2's `latent` map) trained for the config's budget (8M positions) and for twice it, at each
given learning rate, each with its held-out learning curve and the figures of
`benchmarks/budgets.py` (the last quarter's gain, the FVU where the rate starts to decay, the
share of the gain made after that point, what each doubling gained).

By default the contextual SAEs and controls are those of the `carry_freeze` ablation (their
carry's parameters stop training where the rate decays), against the plain run's TopK; with
`--variant none`, the plain recipe's, whose carry decays with the rest (docs/design.md, "Budgets":
their curves jump through the decay and can end above their own minimum). The
config's budget is the comparison's own rate stage, read back (with `--keep-stages`, from the
committed copies) rather than trained again; a larger budget trains the plain run's stage in
`<runs>/<hook>-<M>m/lr<rate>/` (TopK, and the plain contextual SAE and control, which
`--variant none` reads) and the variant's in `<runs>/<hook>-<variant>-<M>m/lr<rate>/`.

    python benchmarks/image_budget.py --jobs 2 --keep-stages benchmarks/results/stages/taef2_converged_256_8m \
        --out benchmarks/results/image_budget_taef2_256_latent_carry_freeze.json
    python benchmarks/image_budget.py --variant none --keep-stages benchmarks/results/stages/taef2_converged_256_8m \
        --out benchmarks/results/image_budget_taef2_256_latent.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ctxsae_common.errors import InputError
from ctxsae_common.files import write_json_atomic
from ctxsae_core.pool import check_jobs
from ctxsae_core.config import TrainConfig
from visinterp.image.config import load_run_config
from scenes.figures import pyplot, save_figure
from budgets import draw_budgets, print_table, summarise
from machine import machine_info  # benchmarks/machine.py: run as python benchmarks/<name>.py
from rates import parse_rates
import image_converged
import stages

ROOT = Path(__file__).resolve().parents[1]
NONE = "none"  # --variant none: the plain recipe's contextual SAEs


def parse_budgets(text: str) -> list[int]:
    """'8e6,16e6' -> [8000000, 16000000]."""
    try:
        budgets = [int(float(part)) for part in text.split(",")]
    except ValueError:
        budgets = [0]
    if not all(b > 0 for b in budgets):
        raise argparse.ArgumentTypeError(f"--tokens {text!r}: give positive position counts, comma-separated (8e6,16e6)")
    return budgets


def budget_folder(hook: str, tokens: int, config_tokens: int, variant: str | None = None) -> str:
    """The stage folder of a budget: the comparison's own (`latent`, `latent-carry_freeze`) at the
    config's budget, with the budget in millions appended otherwise (`latent-carry_freeze-16m`)."""
    base = hook if variant is None else f"{hook}-{variant}"
    return base if tokens == config_tokens else f"{base}-{tokens / 1e6:g}m"


def budget_stage(runner: stages.Stages, cfg, hook: str, variant: str | None, tokens: int):
    """A stage function at `hook` for one budget (`image_converged.hook_stage` in the budget's
    folders): the per-position SAEs in the plain folder, the contextual SAEs and controls in the
    variant's."""
    return image_converged.hook_stage(runner, cfg, hook, variant, budget_folder(hook, tokens, cfg.sweep.tokens),
                                      budget_folder(hook, tokens, cfg.sweep.tokens, variant))


def plot(result: dict, path: Path) -> None:
    """One panel per SAE (rows) and learning rate (columns): its learning curve at each budget."""
    names = list(dict.fromkeys(s["sae"] for s in result["series"]))
    rates = list(dict.fromkeys(s["lr"] for s in result["series"]))
    fig, axes = pyplot().subplots(len(names), len(rates), figsize=(6.5 * len(rates), 3.6 * len(names)), squeeze=False)
    for s in result["series"]:
        ax = axes[names.index(s["sae"])][rates.index(s["lr"])]
        draw_budgets(ax, s, result["decay_fraction"], "patches")
        ax.set_title(f"{s['sae']}, lr {s['lr']:g}", fontsize=10)
        ax.xaxis.label.set_size(8)
    variant = f", contextual SAEs: {result['variant']}" if result["variant"] else ""
    fig.suptitle(f"{result['autoencoder']} `{result['hook']}`: learning curves by budget (k {result['k']}, seed 0"
                 f"{variant})", y=1.0)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=ROOT / "configs/image/taef2_converged_256_8m.toml")
    p.add_argument("--out", type=Path, default=None, help="the JSON, its plot beside it (default: runs/<config name>"
                                                          "_budget.json)")
    p.add_argument("--runs", type=Path, default=None,
                   help="the harvest and the stages' run folders (default: runs/<config name>, as image_converged.py)")
    p.add_argument("--hook", default="latent", help="the hook (default %(default)s)")
    p.add_argument("--k", type=int, default=4, help="the budget k (default %(default)s: the comparison's headline k)")
    p.add_argument("--lr", type=lambda text: parse_rates(text, allow_default=False), default=[1e-3, 3e-3, 1e-2],
                   help="learning rates, each trained at every budget (default %(default)s)")
    p.add_argument("--tokens", type=parse_budgets, default=None,
                   help="training positions an SAE, comma-separated (default: the config's budget and twice it)")
    p.add_argument("--variant", type=lambda text: text if text == NONE else stages.parse_variant(text),
                   default="carry_freeze", help="the contextual SAEs' ablation, as image_converged.py's (default "
                   "%(default)s; none: the plain recipe)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--keep-stages", type=Path, default=None, metavar="DIR",
                   help="as image_converged.py: copy each finished stage to DIR/<stage>/, read stages from there")
    p.add_argument("--jobs", type=int, default=1, help="SAEs of a stage trained at a time (default 1)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    try:
        cfg = load_run_config(args.config)
    except InputError as e:
        p.error(str(e))
    if args.hook not in cfg.harvest.hooks:
        p.error(f"--hook {args.hook}: choose among the config's hooks {', '.join(cfg.harvest.hooks)}")
    if args.k not in cfg.sweep.k or args.k not in cfg.sweep.k_contextual:
        p.error(f"--k {args.k} must be in the config's sweep.k {list(cfg.sweep.k)} and sweep.k_contextual "
                f"{list(cfg.sweep.k_contextual)}")
    try:
        check_jobs(args.jobs)
    except InputError as e:
        p.error(str(e))
    variant = None if args.variant == NONE else args.variant
    budgets = args.tokens or [cfg.sweep.tokens, 2 * cfg.sweep.tokens]
    args.runs = args.runs or Path("runs") / args.config.stem
    args.out = args.out or Path("runs") / f"{args.config.stem}_budget.json"
    start = time.perf_counter()
    runner = image_converged.stage_runner(cfg, args)  # harvests (and raises its errors) at the first trained stage

    found: dict[tuple[str, float], list[dict]] = {}
    for lr in args.lr:
        for tokens in budgets:
            stage = budget_stage(runner, cfg, args.hook, variant, tokens)
            try:
                saes = stage(f"lr{lr:g}", k=(args.k,), k_contextual=(args.k,), lr=lr, seed=0, tokens=tokens)["saes"]
            except InputError as e:
                p.error(str(e))
            for name, row in saes.items():
                found.setdefault((name, lr), []).append(row)

    decay_fraction = TrainConfig().decay_fraction
    series = [{"sae": name, "family": rows[0]["family"], "lr": lr, **summarise(rows, decay_fraction)}
              for (name, lr), rows in found.items()]
    series.sort(key=lambda s: (["per-position", "contextual", "control"].index(s["family"]), s["lr"]))
    autoencoder = Path(str(cfg.autoencoder)).name
    result = {"autoencoder": autoencoder, "hook": args.hook, "k": args.k, "variant": variant, "rates": args.lr,
              "budgets": budgets, "decay_fraction": decay_fraction, "config": cfg.to_dict(), "series": series,
              "seconds": time.perf_counter() - start, "stage_seconds": runner.seconds, "machine": machine_info()}
    for s in series:
        print(f"\n{s['sae']} ({s['family']}), lr {s['lr']:g}:")
        print_table(s)
    write_json_atomic(args.out, result)
    plot(result, args.out.with_suffix(".png"))
    print(f"\nwrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
