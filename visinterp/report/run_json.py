"""`run.json`: what a finished job leaves for its report and its notebook view to read, so that
a view needs the run folder only and never rebuilds the job. Every job writes one: its name, the
held-out ids, the context axis, each activation site's grid and map shape, and where each SAE
and the stores are (paths relative to the run folder)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ctxsae_common.errors import InputError
from ctxsae_common.files import read_json_object, write_json_atomic

REPO_ROOT = Path(__file__).resolve().parents[2]  # a source checkout: where `make demo` writes runs/
RUN_FILE = "run.json"
RUN_FORMAT = 1
COMMANDS = {"image": "visinterp run --out {out}", "llm": "visinterp llm-compare --config FILE --out {out}",
            "coords": "visinterp scene-features --fit FIT --out {out}"}


def write_run(folder: str | Path, job: str, **fields: Any) -> Path:
    """Write folder/run.json for a finished `job` ('image', 'llm' or 'coords')."""
    return write_json_atomic(Path(folder) / RUN_FILE, {"job": job, "format": RUN_FORMAT, **fields})


def find_run_folder(folder: str | Path) -> Path:
    """`folder` as given when it exists or is absolute; a relative path that does not exist here is
    looked up from the repository root too, so a notebook opened from notebooks/ finds runs/quick."""
    folder = Path(folder).expanduser()
    if folder.is_absolute() or folder.exists():
        return folder
    from_root = REPO_ROOT / folder
    return from_root if (from_root / RUN_FILE).is_file() else folder


def read_run(folder: str | Path, job: str) -> dict[str, Any]:
    """The run.json of a finished `job` in `folder`, with one-line errors for a missing,
    unfinished or other job's folder."""
    folder = Path(folder)
    if not (folder / RUN_FILE).is_file():
        raise InputError(f"{folder}: no {RUN_FILE}, so no finished {job} run is there: run "
                         f"`{COMMANDS[job].format(out=folder)}` first (or point at the folder it wrote)")
    run = read_json_object(folder / RUN_FILE, "run record")
    if run.get("job") != job:
        raise InputError(f"{folder / RUN_FILE}: a {run.get('job')!r} run, not a {job!r} run: open it with the "
                         f"{run.get('job')} job's view")
    if run.get("format") != RUN_FORMAT:
        raise InputError(f"{folder / RUN_FILE}: format {run.get('format')!r} is not {RUN_FORMAT}: run the job again")
    return run
