r"""Adds `threshold_sensitivity` (the held-out L0 and FVU with the inference threshold 5% lower
and 5% higher, `ctxsae_core.evaluate.threshold_sensitivity`) to the SAE rows of converged image
comparisons written before the rows held it, from the SAEs their stages saved: nothing is
trained again.

Every stage run folder under `--runs` (`<hook>[-<variant>]/<stage>/`, as
`benchmarks/image_converged.py` writes them) is read back (`visinterp.image.view.RunView`); each
thresholded SAE of its `metrics.json` that lacks the figure is first evaluated at its saved
threshold on the stage's held-out windows, and must give its row's FVU and L0 again (relative
1e-5: the folder is the one the row came from, the windows the same), then at the two other
thresholds. The rows are written back to the stage's `metrics.json`, to its kept copy under
`--kept` (so that a comparison read back from the kept stages holds them too) and to the rows of
each `--results` JSON with the same hook, name and FVU. A result keeps the machine and commit of
its training; `threshold_sensitivity_added` records this script's.

    python benchmarks/threshold_sensitivity.py --runs runs/taef2_converged_256_8m \
        --kept benchmarks/results/stages/taef2_converged_256_8m \
        --results benchmarks/results/image_converged_taef2_256_8m*.json
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Iterable, Iterator

from tqdm import tqdm

from ctxsae_common.errors import InputError
from ctxsae_common.files import read_json_object, write_json_atomic
from ctxsae_core.evaluate import evaluate
from visinterp.analysis.codes import sensitivity
from visinterp.image.view import RunView
from machine import machine_info  # benchmarks/machine.py: run as python benchmarks/<name>.py

FIELD = "threshold_sensitivity"
AGREE = 1e-5  # relative: a saved SAE evaluated again on another thread count differs in the last bits


def may_have_threshold(row: dict) -> bool:
    """Whether a row's SAE may be thresholded (BatchTopK): a contextual SAE or its control, whose
    innovations are BatchTopK by default, or a per-position BatchTopK series; TopK rows are passed
    over unloaded."""
    return row.get("family") in ("contextual", "control") or row.get("series", "").startswith("batchtopk")


def stage_folders(runs: Path) -> list[Path]:
    """The finished stage run folders under a comparison's runs folder, in a stable order."""
    return sorted(p.parent for p in runs.glob("*/*/metrics.json") if p.parent.parent.name != "harvest")


def stage_rows(metrics: dict) -> Iterator[tuple[str, str, dict]]:
    """(hook, name, row) of each SAE row of a stage's metrics.json (keyed "hook/name")."""
    for key, row in metrics["saes"].items():
        yield *key.split("/", 1), row


def fill(rows: Iterable[tuple[str, str, dict]], found: dict) -> tuple[int, list[str]]:
    """Give each thresholded row without the figure the points `found` holds for its hook, name
    and FVU: (rows filled, "hook/name" of those still without)."""
    filled, left = 0, []
    for hook, name, row in rows:
        if FIELD in row or not may_have_threshold(row):
            continue
        points = found.get((hook, name, row["fvu"]))
        if points is None:
            left.append(f"{hook}/{name}")
            continue
        row[FIELD] = points
        filled += 1
    return filled, left


def backfill_stage(folder: Path, progress: bool) -> dict[tuple[str, str, float], list[dict]]:
    """Add the figure to the stage's rows that lack it; returns {(hook, name, fvu): points} for
    every thresholded row of the stage (those it already held too)."""
    path = folder / "metrics.json"
    metrics = read_json_object(path, "stage metrics")
    found = {(hook, name, row["fvu"]): row[FIELD] for hook, name, row in stage_rows(metrics) if FIELD in row}
    missing = [(hook, name, row) for hook, name, row in stage_rows(metrics)
               if FIELD not in row and may_have_threshold(row)]
    if not missing:
        return found
    view = RunView(folder)
    for hook, name, row in tqdm(missing, desc=f"{folder.parent.name}/{folder.name}", disable=not progress):
        data = view.hook(hook)
        model, shuffle = data.models[name], data.shuffle[name]
        if not model.activation.has_statistics:
            continue
        again = evaluate(model, data.held_x, data.axis, shuffle_context=shuffle, seed=data.seed)
        for what in ("fvu", "l0"):
            if not math.isclose(again[what], row[what], rel_tol=AGREE):
                raise InputError(f"{folder}: {hook}/{name}'s saved SAE gives held-out {what} {again[what]:.6g}, its "
                                 f"row {row[what]:.6g}: the SAE or the held-out windows are not the row's; nothing added")
        found[hook, name, row["fvu"]] = sensitivity(model, data.held_x, data.axis, shuffle, data.seed)[FIELD]
    if fill(stage_rows(metrics), found)[0]:
        write_json_atomic(path, metrics)
    return found


def update_kept(kept: Path, folder: Path, found: dict) -> bool:
    """The stage's kept copy (`<kept>/<hook dir>/<stage>/metrics.json`) gets the same figures;
    False when there is none."""
    path = kept / folder.parent.name / folder.name / "metrics.json"
    if not path.is_file():
        return False
    metrics = read_json_object(path, "kept stage metrics")
    if fill(stage_rows(metrics), found)[0]:
        write_json_atomic(path, metrics)
    return True


def update_result(path: Path, found: dict, added: dict) -> tuple[int, list[str]]:
    """Add the figures to a comparison result's rows: (rows filled, thresholded rows still without)."""
    result = read_json_object(path, "comparison result")
    filled, left = fill(((hook, name, row) for hook, block in result["hooks"].items()
                         for name, row in block["saes"].items()), found)
    if filled:
        result[f"{FIELD}_added"] = added
        write_json_atomic(path, result)
    return filled, left


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=Path, required=True, help="a converged image comparison's runs folder")
    p.add_argument("--kept", type=Path, default=None, help="its kept stages (--keep-stages of the comparison)")
    p.add_argument("--results", type=Path, nargs="*", default=[], help="comparison result JSON files to fill in")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    folders = stage_folders(args.runs)
    if not folders:
        p.error(f"--runs {args.runs}: no stage run folders (<hook>/<stage>/metrics.json) there")
    missing = [str(r) for r in args.results if not r.is_file()]
    if missing:
        p.error(f"--results: no such file {missing[0]}")
    found: dict = {}
    table = []
    try:
        for folder in folders:
            at_stage = backfill_stage(folder, not args.no_progress)
            kept = args.kept is not None and update_kept(args.kept, folder, at_stage)
            found |= at_stage
            table.append((f"{folder.parent.name}/{folder.name}", len(at_stage), "yes" if kept else "no"))
    except InputError as e:
        p.error(str(e))
    print(f"{'stage':<40} {'thresholded SAEs':>16}  kept copy")
    for name, n, kept in table:
        print(f"{name:<40} {n:>16}  {kept}")
    added = machine_info()
    for path in args.results:
        filled, left = update_result(path, found, added)
        print(f"{path}: {filled} rows filled" + (f"; none found for {', '.join(left)}" if left else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
