"""The SAELens round trip, checked against SAELens itself (it lives in .venv-bench): for each
per-position architecture, an SAE of ours (random weights, perturbed so no default hides a bug,
with a non-trivial normalisation) is exported with `ctxsae export`'s function, loaded with
SAELens's `SAE.load_from_disk`, and its reconstruction compared with ours; then SAELens saves
that SAE with `save_model`, `import_saelens` reads it back, and the reconstruction is compared
again. Prints the largest absolute difference per direction (relative to the activations' scale)
and writes JSON; a difference above --tolerance exits 1.

    .venv-bench/bin/python benchmarks/saelens_roundtrip.py --out benchmarks/results/saelens_roundtrip.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from ctxsae_common.files import write_json_atomic
from ctxsae_core import SAE, BatchTopK, JumpReLU, ReLU, SAEConfig, TopK
from ctxsae_core.checkpoint import export_saelens, import_saelens
from machine import machine_info  # benchmarks/machine.py: run as python benchmarks/<name>.py

ACTIVATIONS = {"topk": TopK(k=16), "batchtopk": BatchTopK(k=16), "relu": ReLU(), "jumprelu": JumpReLU()}


def model_of(act, d: int, width: int, x: torch.Tensor) -> SAE:
    """An SAE of ours initialised from `x` with every parameter perturbed."""
    torch.manual_seed(0)
    model = SAE(SAEConfig(d_in=d, width=width, activation=act))
    model.init_from_data_(x)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        if hasattr(model.activation, "threshold"):
            model.activation.threshold.fill_(0.05)
            model.activation.threshold_seen.fill_(True)
    return model.eval()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--d", type=int, default=64)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--tolerance", type=float, default=1e-4, help="largest relative difference allowed (default 1e-4)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/saelens_roundtrip.json"))
    args = p.parse_args(argv)
    import sae_lens
    from sae_lens import SAE as LensSAE

    x = torch.randn(2048, 1, args.d) * 3 + 1
    scale = float(x.abs().max())
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, act in ACTIVATIONS.items():
            ours = model_of(act, args.d, args.width, x)
            export_saelens(ours, Path(tmp) / name)
            lens = LensSAE.load_from_disk(Path(tmp) / name)
            with torch.no_grad():
                mine = ours(x).x_hat[:, 0]
                theirs = lens(x[:, 0])
                lens.save_model(Path(tmp) / f"{name}_saved")
                back = import_saelens(Path(tmp) / f"{name}_saved")(x).x_hat[:, 0]
            rows[name] = {"saelens_architecture": lens.cfg.architecture(),
                          "export_max_abs_diff": float((mine - theirs).abs().max()),
                          "import_max_abs_diff": float((back - theirs).abs().max())}
    worst = max(max(r["export_max_abs_diff"], r["import_max_abs_diff"]) for r in rows.values()) / scale
    print(f"SAELens {sae_lens.__version__} round trip, d {args.d}, width {args.width}, activations up to {scale:.2f}")
    print(f"{'ours':<12}{'SAELens arch':<14}{'export: max |diff|':>20}{'import: max |diff|':>20}")
    for name, r in rows.items():
        print(f"{name:<12}{r['saelens_architecture']:<14}{r['export_max_abs_diff']:>20.2e}{r['import_max_abs_diff']:>20.2e}")
    ok = worst <= args.tolerance
    print(f"largest difference relative to the activations' scale: {worst:.2e} ({'within' if ok else 'above'} "
          f"{args.tolerance:g})")
    write_json_atomic(args.out, {"saelens": sae_lens.__version__, "d": args.d, "width": args.width,
                                 "activation_scale": scale, "rows": rows, "worst_relative": worst,
                                 "tolerance": args.tolerance, "within_tolerance": ok, "machine": machine_info()})
    print(f"wrote {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
