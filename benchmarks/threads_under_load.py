"""Commands under load: the same work timed while 0, 1, ... cores are kept busy by busy-loop
processes, at each thread setting:

- `1`: --threads 1;
- `all`: --threads <cores>, PyTorch's own default (one thread per core);
- `all, passive`: the same with OMP_WAIT_POLICY=PASSIVE (OpenMP threads sleep instead of spinning
  while they wait; the variable must be set before PyTorch loads);
- `default`: no --threads, the command's default (`ctxsae_common.threads.default_threads`, the
  cores idle when the command starts); the table names the count it chose.

Workloads: `ctxsae train` of a contextual SAE on a 4x4 raster (100,000 tokens of random d 32
windows) and `scenes render` of 6 scenes at 128 px. Each timing is one fresh process, wall clock
including start-up.

    python benchmarks/threads_under_load.py --out benchmarks/results/threads_under_load.json
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ctxsae_common.files import write_json_atomic
from ctxsae_common.threads import available_cores, default_threads
from machine import machine_info  # benchmarks/machine.py: run as python benchmarks/<name>.py

BIN = Path(sys.executable).parent


def workloads(tmp: Path) -> dict[str, list[str]]:
    """name -> command line (without --threads and --out)."""
    acts = tmp / "acts.npy"
    np.save(acts, np.random.default_rng(0).normal(size=(6400, 16, 32)).astype(np.float32))
    return {
        "ctxsae train (contextual, 4x4 raster, 100k tokens)": [
            str(BIN / "ctxsae"), "train", "--acts", str(acts), "--arch", "contextual", "--axis", "raster",
            "--grid", "4x4", "--tokens", "100000", "--device", "cpu", "--no-progress"],
        "scenes render (6 scenes, 128 px)": [
            str(BIN / "scenes"), "render", "--n", "6", "--size", "128", "--seed", "0", "--device", "cpu"],
    }


def settings(cores: int) -> dict[str, tuple[list[str], dict[str, str]]]:
    """name -> (extra flags, extra environment)."""
    return {"1": (["--threads", "1"], {}),
            "all": (["--threads", str(cores)], {}),
            "all, passive": (["--threads", str(cores)], {"OMP_WAIT_POLICY": "PASSIVE"}),
            "default": ([], {})}


def timed(cmd: list[str], env: dict[str, str]) -> float:
    """Wall-clock seconds of one run of `cmd`; raises when it fails."""
    t0 = time.perf_counter()
    subprocess.run(cmd, env={**os.environ, **env}, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--loads", type=int, nargs="+", default=None,
                   help="busy-loop processes to run beside each timing (default: 0 1 ... cores)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/threads_under_load.json"))
    args = p.parse_args(argv)
    cores = available_cores()
    loads = args.loads if args.loads is not None else list(range(cores + 1))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, cmd in workloads(Path(tmp)).items():
            for load in loads:
                spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(load)]
                try:
                    time.sleep(1.0)
                    for setting, (flags, env) in settings(cores).items():
                        chosen = default_threads() if setting == "default" else None
                        out = Path(tmp) / f"run_{len(rows)}"
                        seconds = timed(cmd + flags + ["--out", str(out)], env)
                        rows.append({"workload": name, "busy_cores": load, "setting": setting,
                                     "threads": chosen or int(flags[1]), "seconds": seconds})
                        print(f"{name:<52}{load:>5} busy  {setting:<14}{rows[-1]['threads']:>3} threads "
                              f"{seconds:>8.2f} s", flush=True)
                finally:
                    for s in spinners:
                        s.kill()
                        s.wait()
    write_json_atomic(args.out, {"cores": cores, "rows": rows, "machine": machine_info()})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
