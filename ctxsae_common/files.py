"""Files written whole or not at all, and read with one-line errors.

Every write goes to a temporary file in the target's folder and is renamed into place, so an
interrupted write never leaves a half-written file. New files get the permissions the user's
umask gives (a temporary file alone would be private to its owner)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import tomllib
from pathlib import Path
from typing import Any, Callable

from ctxsae_common.errors import InputError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call `write(tmp)` on a temporary path beside `path`, then rename it to `path`. On any
    failure (a full disk included) the temporary file is removed and nothing is left at `path`
    that was not there before; a full disk becomes a one-line InputError."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        if e.errno == 28:  # ENOSPC
            raise InputError(f"{path}: no space left on the device: free some space or pass another output "
                             "folder") from None
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` whole or not at all."""
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write `text` to `path` whole or not at all."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """`obj` as indented JSON (non-finite floats as JSON's NaN/Infinity, as Python writes them)."""
    return write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def write_jsonl_atomic(path: str | Path, rows: list[dict]) -> Path:
    """Rows as JSON Lines (one object per line), whole or not at all."""
    return write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))


def write_folder_atomic(folder: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` on an empty temporary folder beside `folder`, then rename it to `folder`
    (replacing what was there). On any failure the temporary folder is removed, so `folder` is
    either whole or as it was."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        write(tmp)
        os.chmod(tmp, 0o777 & ~_umask())
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def save_tensors_atomic(path: str | Path, tensors: dict, metadata: dict[str, str] | None = None) -> Path:
    """Tensors as one safetensors file (copied to contiguous CPU memory first)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def read_json(path: str | Path, what: str = "file") -> Any:
    """A JSON file's value; a missing or malformed file is a one-line InputError naming it."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: missing {what}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        where = f" ({e.msg} at line {e.lineno})" if isinstance(e, json.JSONDecodeError) else ""
        raise InputError(f"{path}: not valid JSON{where}; the file may be truncated") from None


def read_json_object(path: str | Path, what: str = "file") -> dict[str, Any]:
    """`read_json`, requiring a JSON object (a dict) at the top level."""
    value = read_json(path, what)
    if not isinstance(value, dict):
        raise InputError(f"{path}: {what} must be a JSON object, found {type(value).__name__}: write it again")
    return value


def read_toml(path: str | Path, example: str) -> dict[str, Any]:
    """A TOML config file as a dict, with one-line errors naming the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such config file: pass --config a TOML file such as {example}")
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not valid TOML ({e})") from None


def load_tensors_and_metadata(path: str | Path, what: str = "weights") -> tuple[dict, dict[str, str]]:
    """A safetensors file's tensors (on the CPU) and its string metadata, in one read; a
    missing or truncated file is a one-line InputError."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: missing {what}")
    try:
        with safe_open(str(path), "pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise InputError(f"{path}: unreadable {what} ({str(e).splitlines()[0]}); the file may be truncated") from None


def load_tensors(path: str | Path, what: str = "weights") -> dict:
    """A safetensors file's tensors (on the CPU); a missing or truncated file is a one-line InputError."""
    return load_tensors_and_metadata(path, what)[0]
