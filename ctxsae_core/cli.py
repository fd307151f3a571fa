"""`ctxsae`: train, evaluate, share and convert SAEs on your own activations.

    ctxsae train --acts acts.npy --out runs/topk
    ctxsae train --acts acts.npy --arch contextual --carry gated --k 8 --out runs/ctx
    ctxsae evaluate --sae runs/ctx --acts heldout.npy --json
    ctxsae export --sae runs/topk --out runs/topk-saelens
    ctxsae import-saelens path/or/user/repo/sub --out runs/from-saelens
    ctxsae push --sae runs/ctx --repo user/repo/ctx

Activations are one float tensor [N, T, d] ([N, d] for per-position SAEs) in a .npy or
.safetensors file. Bad input exits with code 2 and one line saying what is wrong and the fix."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from ctxsae_common.cli import OneLineParser, positive_int, run_command
from ctxsae_common.device import add_device_flags, check_dtype
from ctxsae_common.errors import InputError
from ctxsae_common.hub import push_folder, split_hub_id
from ctxsae_common.typed import field_help
from ctxsae_core.axes import AXIS_KINDS, ContextAxis, make_axis, parse_grid
from ctxsae_core.checkpoint import export_saelens, import_saelens, load_sae, save_sae
from ctxsae_core.config import CARRY_KINDS, ContextualConfig, JumpReLU, ReLU, SAEConfig, TopK, TrainConfig
from ctxsae_core.data import WindowBatches, as_windows, load_activations, split_holdout, split_indices
from ctxsae_core.distributed import init_from_env, launched_by_torchrun, shutdown
from ctxsae_core.evaluate import evaluate
from ctxsae_core.registry import ACTIVATION_CONFIGS
from ctxsae_core.store import ActivationStore, is_store, store_shard
from ctxsae_core.sweep import train_sae

ARCH_CHOICES = [*ACTIVATION_CONFIGS.names(), "contextual"]
DEFAULT_K = {"per_position": 32, "contextual": 8}
DEFAULT_BATCH_TOKENS = 4096
MIN_DEFAULT_TOKENS = 1_000_000


def _add_axis_flags(p: argparse.ArgumentParser, default: str | None) -> None:
    p.add_argument("--axis", choices=AXIS_KINDS, default=default,
                   help="context axis: 'tokens' (previous position), 'raster' (previous patch of an HxW "
                        "grid), 'quadtree' (coarse-to-fine cells of an HxW grid)"
                        + (f" (default: {default})" if default else " (default: the one the SAE was trained on)"))
    p.add_argument("--grid", type=parse_grid, default=None, metavar="HxW",
                   help="grid of image axes; H*W must equal T (default: the store's grid with a store, else a square grid)")


def build_parser() -> argparse.ArgumentParser:
    """The `ctxsae` command line: `train`, `evaluate`, `export`, `import-saelens` and `push`."""
    parser = OneLineParser(prog="ctxsae", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    t = sub.add_parser("train", help="train an SAE on an activations file",
                       description="Train a per-position or contextual SAE. Holds out --holdout of the "
                                   "windows for evaluation; resumes from DIR's last checkpoint if one exists.")
    t.add_argument("--acts", required=True, type=Path,
                   help="activations: a .npy or .safetensors file, [N, T, d] or [N, d], or an activation store folder "
                        "(streamed shard by shard) or one of its shards, checked against its checksums")
    t.add_argument("--out", required=True, type=Path, help="run folder: the SAE, metrics.jsonl, eval.json, checkpoints")
    t.add_argument("--arch", choices=ARCH_CHOICES, default="topk",
                   help="SAE architecture: a per-position activation, or 'contextual' (default: topk)")
    t.add_argument("--width", type=int, default=None, help="dictionary features (default: 8 * d)")
    sparsity = t.add_mutually_exclusive_group()
    sparsity.add_argument("--k", type=int, default=None,
                          help="topk/batchtopk: active features (innovations) per position "
                               f"(default: {DEFAULT_K['per_position']}, contextual {DEFAULT_K['contextual']})")
    sparsity.add_argument("--l1", type=float, default=None,
                          help=f"relu: weight of the L1 penalty (default {ReLU.l1_coeff})")
    sparsity.add_argument("--l0-coeff", type=float, default=None,
                          help=f"jumprelu: weight of the L0 penalty (default {JumpReLU.l0_coeff})")
    t.add_argument("--innovation", choices=ACTIVATION_CONFIGS.names(), default="batchtopk",
                   help="contextual: activation that codes the innovations (default: batchtopk)")
    t.add_argument("--carry", choices=CARRY_KINDS, default="gated", help=field_help(ContextualConfig, "carry"))
    t.add_argument("--carry-coeff", type=float, default=None, metavar="W",
                   help="contextual: " + field_help(ContextualConfig, "carry_coeff")
                   + f" (default: {ContextualConfig.carry_coeff:g})")
    _add_axis_flags(t, "tokens")
    t.add_argument("--tokens", type=int, default=None,
                   help=f"training positions (default: one pass over the training windows, at least {MIN_DEFAULT_TOKENS:,})")
    t.add_argument("--batch-tokens", type=int, default=DEFAULT_BATCH_TOKENS,
                   help=f"positions per optimiser step on each process; windows per step = batch_tokens // T "
                        f"(default: {DEFAULT_BATCH_TOKENS}; under torchrun the global batch is the processes times it)")
    t.add_argument("--lr", type=float, default=None, help=field_help(TrainConfig, "lr"))
    t.add_argument("--max-grad-norm", type=float, default=TrainConfig.max_grad_norm, metavar="NORM",
                   help=field_help(TrainConfig, "max_grad_norm") + f" (default: {TrainConfig.max_grad_norm:g})")
    t.add_argument("--seed", type=int, default=0, help=field_help(TrainConfig, "seed"))
    t.add_argument("--shuffle-context", action="store_true", help=field_help(TrainConfig, "shuffle_context"))
    t.add_argument("--holdout", type=float, default=0.1, help="fraction of windows held out for evaluation (default: 0.1)")
    t.add_argument("--checkpoint-every", type=int, default=TrainConfig.checkpoint_every, metavar="STEPS",
                   help=field_help(TrainConfig, "checkpoint_every") + f" (default: {TrainConfig.checkpoint_every})")
    add_device_flags(t, dtype=True)
    t.add_argument("--nproc", type=positive_int, default=1, metavar="N",
                   help="train data-parallel on N processes (torchrun --nproc-per-node N, one GPU each under "
                        "--device cuda); --tokens stays the global budget (default: 1)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")

    e = sub.add_parser("evaluate", help="evaluate a trained SAE on activations",
                       description="Print FVU, MSE, L0 (innovations), state L0, dead fraction and positions.")
    e.add_argument("--sae", required=True, help="an SAE folder written by 'ctxsae train', or a hub id "
                   "(user/repo or user/repo/sub/folder)")
    e.add_argument("--acts", required=True, type=Path,
                   help="activations: a .npy or .safetensors file, [N, T, d] or [N, d], or an activation store folder "
                        "or one of its shards, checked against its checksums")
    e.add_argument("--shuffle-context", action="store_true",
                   help="the shuffled-context control: permute positions within each window first")
    _add_axis_flags(e, None)
    e.add_argument("--batch-windows", type=int, default=64, help="windows per evaluation batch (default: 64)")
    e.add_argument("--seed", type=int, default=0, help="seed of the shuffled-context permutation (default: 0)")
    e.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    add_device_flags(e)

    x = sub.add_parser("export", help="export a per-position SAE to SAELens's format",
                       description="Write cfg.json + sae_weights.safetensors that SAELens's SAE.load_from_disk reads.")
    x.add_argument("--sae", required=True, help="an SAE folder written by 'ctxsae train', or a hub id")
    x.add_argument("--out", required=True, type=Path, help="folder to write")
    x.add_argument("--hook-name", default=None, help="hook name recorded in cfg.json metadata")

    i = sub.add_parser("import-saelens", help="read a SAELens SAE as a per-position SAE of this tool",
                       description="Read SAELens's cfg.json + sae_weights.safetensors (standard, topk or jumprelu) "
                                   "into an SAE folder that 'ctxsae evaluate' and the jobs read, with the same "
                                   "reconstruction.")
    i.add_argument("source", help="a SAELens SAE folder or hub id (user/repo or user/repo/sub/folder)")
    i.add_argument("--out", required=True, type=Path, help="SAE folder to write")

    u = sub.add_parser("push", help="upload an SAE folder to the Hugging Face hub",
                       description="Upload an SAE folder (config.json, model.safetensors, axis.json) to a hub "
                                   "repository, creating it if needed; 'ctxsae evaluate --sae user/repo/sub' and "
                                   "load_sae read it back. Needs `hf auth login` first.")
    u.add_argument("--sae", required=True, type=Path, help="an SAE folder written by 'ctxsae train'")
    u.add_argument("--repo", required=True, help="hub id to upload to: user/repo, or user/repo/sub/folder")
    u.add_argument("--private", action="store_true", help="create the repository as private")
    return parser


_SPARSITY_FLAG = {"topk": "--k", "batchtopk": "--k", "relu": "--l1", "jumprelu": "--l0-coeff"}


def _activation(kind: str, args, default_k: int):
    """The activation config of `kind` from the sparsity flag that applies to it (the others
    must not be given)."""
    cls = ACTIVATION_CONFIGS[kind]
    given = {"--k": args.k, "--l1": args.l1, "--l0-coeff": args.l0_coeff}
    wrong = [flag for flag, value in given.items() if value is not None and flag != _SPARSITY_FLAG[kind]]
    if wrong:
        raise InputError(f"{wrong[0]} does not apply to {kind}: set its sparsity with {_SPARSITY_FLAG[kind]}")
    if issubclass(cls, TopK):
        return cls(k=args.k if args.k is not None else default_k)
    if cls is ReLU:
        return ReLU() if args.l1 is None else ReLU(l1_coeff=args.l1)
    return JumpReLU() if args.l0_coeff is None else JumpReLU(l0_coeff=args.l0_coeff)


def _sae_config(args, d: int) -> SAEConfig:
    width = args.width if args.width is not None else 8 * d
    if args.arch == "contextual":
        act = _activation(args.innovation, args, min(DEFAULT_K["contextual"], width))
        coeff = ContextualConfig.carry_coeff if args.carry_coeff is None else args.carry_coeff
        return ContextualConfig(d_in=d, width=width, activation=act, carry=args.carry, carry_coeff=coeff)
    if args.carry_coeff is not None:
        raise InputError(f"--carry-coeff applies to --arch contextual only, not {args.arch}: drop it")
    act = _activation(args.arch, args, min(DEFAULT_K["per_position"], width))
    return SAEConfig(d_in=d, width=width, activation=act)


def _relaunch_with_torchrun(args, argv: Sequence[str]) -> int:
    """`ctxsae train --nproc N ...` runs `torchrun --nproc-per-node N -m ctxsae_core.cli train ...`."""
    import subprocess

    rest, skip = [], False
    for i, a in enumerate(argv):
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            rest.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}",
           "-m", "ctxsae_core.cli", *rest]
    return subprocess.run(cmd).returncode


def cmd_train(args) -> int:
    """`ctxsae train`: train an SAE on an activations file into --out (resuming from its checkpoint)."""
    if args.nproc > 1 and not launched_by_torchrun():
        return _relaunch_with_torchrun(args, args.argv)
    group, device = init_from_env(args.device)
    try:
        code = _train(args, group, device)
    except BaseException:
        shutdown(wait=False)
        raise
    shutdown()
    return code


def read_acts(path: Path) -> Tensor:
    """What --acts names, whole: a .npy / .safetensors file, a store folder (every shard checked
    against its checksum), or one shard of a store (checked likewise)."""
    if is_store(path):
        store = ActivationStore(path, verify=True)
        return store.gather(torch.arange(store.n_windows))
    shard = store_shard(path)
    if shard is not None:
        store, i = shard
        store.verify([i])
        return store.read_shard(i)["activations"]
    return load_activations(path)


def _training_data(args, batch_tokens: int):
    """(train batches, held-out windows, (n, T, d), the store's grid or None, the data's identity)
    for --acts; a store is streamed shard by shard, never loaded whole."""
    if not is_store(args.acts):
        acts = read_acts(args.acts)
        if args.arch == "contextual" and acts.ndim != 3:
            raise InputError(f"{args.acts}: a contextual SAE needs windows [N, T, d], got {list(acts.shape)}: "
                             "save activations with a context axis, or pick a per-position --arch")
        windows = as_windows(acts)
        T = windows.shape[1]
        train, held = split_holdout(windows, args.holdout, args.seed)
        batches = WindowBatches(train, max(1, batch_tokens // T), args.seed)
        return batches, held, tuple(windows.shape), None, data_identity(args.acts, acts)
    store = ActivationStore(args.acts, verify=True)
    n, (T, d) = store.n_windows, store.window_shape
    train, held = split_indices(n, args.holdout, args.seed)
    identity = {"acts": str(Path(args.acts).resolve()), "shape": [n, T, d],
                "shards_sha256": hashlib.sha256("".join(s.sha256 for s in store.shards).encode()).hexdigest()[:16]}
    return (store.batches(train, max(1, batch_tokens // T), args.seed), store.gather(held), (n, T, d), store.grid,
            identity)


def _train(args, group, device) -> int:
    check_dtype(args.dtype, device)
    if not 0 < args.holdout < 1:
        raise InputError(f"--holdout {args.holdout} must lie strictly between 0 and 1")
    if args.batch_tokens < 1:
        raise InputError(f"--batch-tokens {args.batch_tokens} must be at least 1")
    batches, held, (n, T, d), store_grid, identity = _training_data(args, args.batch_tokens)
    cfg = _sae_config(args, d)
    grid = args.grid if args.grid is not None or args.axis == "tokens" else store_grid
    axis = make_axis(args.axis, T, grid)
    batch_windows = max(1, args.batch_tokens // T)
    tokens = args.tokens if args.tokens is not None else max((n - held.shape[0]) * T, MIN_DEFAULT_TOKENS)
    train_cfg = TrainConfig(tokens=tokens, lr=args.lr, max_grad_norm=args.max_grad_norm, seed=args.seed,
                            shuffle_context=args.shuffle_context, progress=not args.no_progress,
                            checkpoint_every=args.checkpoint_every)
    result = train_sae(cfg, train_cfg, batches, axis, args.out, held, batch_windows, device=device, dtype=args.dtype,
                       data_identity=identity).scores
    if group.is_main:
        print(f"{cfg.arch} ({axis.kind}{', shuffled context' if args.shuffle_context else ''}) -> {args.out}: "
              f"fvu {result['fvu']:.4f}  l0 {result['l0']:.2f}  state_l0 {result['state_l0']:.2f}  "
              f"dead {result['dead_fraction']:.1%}  on {result['n_positions']:,} held-out positions; "
              f"{result['tokens']:,} training positions ({result['epochs']:.2g} epochs)")
        if cfg.arch == "contextual" and not result["state_l0"] > result["l0"] * (1 + 1e-3):
            print("note: the contextual SAE carried nothing on the held-out windows (state L0 = L0): it is a "
                  "per-position SAE there; train longer so that its carry learns to persist", file=sys.stderr)
        gain = result["fvu_gain_last_quarter"]
        if result["converged"] is False and gain > 0:
            share = result.get("decay_share_of_last_quarter_gain")
            made = "" if share is None else f", {share:.0%} of it after the learning rate started to decay"
            print(f"warning: held-out FVU still improved by {gain:.1%} over the last quarter of training{made} "
                  "(converged: under 2%): train longer (--tokens) before comparing this SAE", file=sys.stderr)
        elif result["converged"] is False:
            print(f"warning: held-out FVU rose by {-gain:.1%} over the last quarter of training: the run is unstable; "
                  "lower the learning rate (--lr) before comparing this SAE", file=sys.stderr)
    return 0


def data_identity(path: Path, acts) -> dict:
    """What a run trains on: the file, the tensor's shape and a hash of a sample of its rows
    (the first and last 64), so that resuming into the folder with other data is refused."""
    sample = acts[:64].contiguous().numpy().tobytes() + acts[-64:].contiguous().numpy().tobytes()
    return {"acts": str(Path(path).resolve()), "shape": list(acts.shape),
            "sample_sha256": hashlib.sha256(sample).hexdigest()[:16]}


def _eval_axis(args, saved: ContextAxis | None, T: int) -> ContextAxis:
    kind = args.axis or (saved.kind if saved else "tokens")
    grid = args.grid
    if grid is None and saved is not None and saved.kind == kind and saved.grid and saved.n_inputs == T:
        grid = saved.grid
    return make_axis(kind, T, grid)


def cmd_evaluate(args) -> int:
    """`ctxsae evaluate`: the shared metrics of a trained SAE on an activations file."""
    model, saved_axis = load_sae(args.sae, device=args.device)
    acts = read_acts(args.acts)
    windows = as_windows(acts)
    if windows.shape[-1] != model.config.d_in:
        raise InputError(f"{args.acts}: activations have d={windows.shape[-1]} but the SAE in {args.sae} "
                         f"reads d={model.config.d_in}: pass activations from the same hook")
    if model.config.arch == "contextual" and acts.ndim != 3:
        raise InputError(f"{args.acts}: a contextual SAE needs windows [N, T, d], got {list(acts.shape)}")
    axis = _eval_axis(args, saved_axis, windows.shape[1])
    result = evaluate(model, windows, axis, batch_windows=args.batch_windows,
                      shuffle_context=args.shuffle_context, seed=args.seed, progress=not args.json)
    if args.json:
        print(json.dumps(result))
    else:
        for key in ("arch", "axis", "shuffle_context", "fvu", "mse", "l0", "state_l0", "dead_fraction", "n_positions"):
            value = result[key]
            print(f"{key:>16}  {value:.6g}" if isinstance(value, float) else f"{key:>16}  {value}")
        print(f"{'state L0':>16}  {result['state_l0_counting']}")
    return 0


def cmd_export(args) -> int:
    """`ctxsae export`: a per-position SAE in SAELens's layout."""
    model, _ = load_sae(args.sae)
    export_saelens(model, args.out, args.hook_name)
    print(f"wrote {args.out}/cfg.json and sae_weights.safetensors (SAELens, architecture from {model.config.arch})")
    return 0


def cmd_import_saelens(args) -> int:
    """`ctxsae import-saelens`: a SAELens SAE as an SAE folder of this tool."""
    model = import_saelens(args.source)
    save_sae(model, args.out)
    print(f"wrote {args.out} ({model.config.arch}, d {model.config.d_in}, width {model.config.width})")
    return 0


def cmd_push(args) -> int:
    """`ctxsae push`: upload an SAE folder to the hub."""
    load_sae(args.sae)  # a folder that does not load is not uploaded
    url = push_folder(args.sae, args.repo, private=args.private)
    print(f"uploaded {args.sae} to {url}" + (f" ({split_hub_id(args.repo)[1]})" if split_hub_id(args.repo)[1] else ""))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run `ctxsae` with `argv`; returns the exit code (2 for bad input, with one line on stderr)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    parser.set_defaults(argv=argv)
    return run_command(parser, {"train": cmd_train, "evaluate": cmd_evaluate, "export": cmd_export,
                                         "import-saelens": cmd_import_saelens, "push": cmd_push}, argv)


if __name__ == "__main__":
    sys.exit(main())
