"""Where computation runs: `--device {auto,cpu,cuda,cuda:N}` resolved to a torch.device with a
one-line error when the device is missing, and `--dtype` (float32, or bfloat16 autocast on CUDA)."""

from __future__ import annotations

import argparse
import contextlib
from typing import Iterator

import torch

from ctxsae_common.errors import InputError
from ctxsae_common.threads import add_threads_flag

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"
DTYPES = ("float32", "bfloat16")


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """'auto' (CUDA when present, else the CPU), 'cpu', 'cuda' or 'cuda:N' as a torch.device; a
    device that is not there is a one-line InputError saying what to pass instead."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise InputError(f"--device {spec!r} is not a device: pass {DEVICE_CHOICES}") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise InputError(f"--device {spec!r} is not supported: pass {DEVICE_CHOICES}")
    if not torch.cuda.is_available():
        raise InputError(f"--device {spec}: no CUDA device is usable here (torch {torch.__version__}, "
                         f"CUDA build {torch.version.cuda or 'none'}): pass --device cpu or auto")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise InputError(f"--device {spec}: this machine has {torch.cuda.device_count()} CUDA device(s), numbered "
                         f"from 0: pass --device cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return device if device.index is not None else torch.device("cuda", torch.cuda.current_device())


def check_dtype(dtype: str, device: torch.device) -> str:
    """`dtype` if it can run on `device`: bfloat16 autocast is offered on CUDA only."""
    if dtype not in DTYPES:
        raise InputError(f"--dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if dtype == "bfloat16" and device.type != "cuda":
        raise InputError("--dtype bfloat16 autocasts on CUDA only: pass --dtype float32 on the CPU")
    return dtype


def creating_on(device: str | torch.device) -> contextlib.AbstractContextManager:
    """A context in which new tensors are made on `device`: `torch.device(device)`, or nothing
    where `device` is already the default (the CPU, usually), since the context's mode adds Python
    overhead to every torch call made inside it."""
    device = torch.device(device)
    return contextlib.nullcontext() if device == torch.get_default_device() else device


@contextlib.contextmanager
def autocast(device: torch.device, dtype: str = "float32") -> Iterator[None]:
    """bfloat16 autocast on CUDA when dtype is 'bfloat16'; plain float32 otherwise."""
    if dtype == "bfloat16":
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            yield
    else:
        yield


def add_device_flags(parser: argparse.ArgumentParser, dtype: bool = False) -> None:
    """Add --device and --threads (and with `dtype`, --dtype) to a command's parser."""
    add_threads_flag(parser)
    parser.add_argument("--device", default="auto", metavar="DEVICE",
                        help=f"where to compute: {DEVICE_CHOICES} (default: auto, CUDA when present)")
    if dtype:
        parser.add_argument("--dtype", choices=DTYPES, default="float32",
                            help="float32 (default), or bfloat16 autocast of the forward pass on CUDA")
