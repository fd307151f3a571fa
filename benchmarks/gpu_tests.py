"""The tests marked `gpu` (skipped where there is no CUDA), run on a GPU machine and recorded as a
result: the pytest command, its summary line and the machine, date and commit.

    python benchmarks/gpu_tests.py --out benchmarks/results/gpu_tests_h100.json

It exits with pytest's status, and writes the JSON only when CUDA is present (a CPU-only run
would record every test as deselected or skipped, which says nothing about the GPU).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import torch

from ctxsae_common.files import write_json_atomic
from machine import ROOT, machine_info  # benchmarks/machine.py: run as python benchmarks/<name>.py

FOLDERS = ("tests/ctxsae_core", "tests/scenes")  # where the gpu-marked tests live


def summary_line(output: str) -> str:
    """pytest -q's last line ('28 passed, 156 deselected in 23.67s'), without the '=' padding."""
    lines = [line.strip(" =") for line in output.strip().splitlines() if line.strip(" =")]
    return lines[-1] if lines else "(pytest printed nothing)"


def failed_tests(output: str) -> list[str]:
    """The node ids of the failed tests in pytest's short summary ('FAILED path::test - reason')."""
    return [line.split()[1] for line in output.splitlines() if line.startswith("FAILED ")]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="result JSON")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: no CUDA device: run this on a GPU machine (the gpu tests skip elsewhere)", file=sys.stderr)
        return 2
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", *FOLDERS]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    print(done.stdout + done.stderr, end="")
    shown = "python -m pytest -m gpu -q " + " ".join(FOLDERS)
    write_json_atomic(args.out, {"command": shown, "summary": summary_line(done.stdout),
                                 "failed": failed_tests(done.stdout), "returncode": done.returncode,
                                 "machine": machine_info("cuda")})
    print(f"wrote {args.out}")
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
