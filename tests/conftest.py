import random
import re
import subprocess
import warnings

import numpy as np
import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def _cache(tmp_path_factory):
    """One cache folder for the whole session, never the user's: the offline LM's GGUF is converted
    once here and every later load (torchrun's ranks included) reads that copy."""
    from ctxsae_common.cache import CACHE_ENV

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CACHE_ENV, str(tmp_path_factory.mktemp("ctxsae_cache")))
        yield


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` need CUDA: skipped with the reason where there is none (run them on a
    GPU machine: `pytest -m gpu`)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (run `pytest -m gpu` on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


class Torchrun:
    """Runs torchrun command lines for the tests. Under load, gloo can end a rank with SIGABRT
    while the process group is torn down (seen once in CI, not reproduced in ~90 local runs): such
    a run is retried once, with a warning that carries its output. A run whose first failing rank
    exits by itself (a non-zero exit code, an exception) is never retried, nor is one the test
    makes fail (`retry=False`): a rank it crashes can take the other down with SIGABRT, and a
    retry would resume from the checkpoints the first attempt left."""

    def __call__(self, cmd: list[str], timeout: float = 300, retry: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if retry and done.returncode != 0 and self.root_cause_was_a_signal(done.stderr):
            warnings.warn(f"a torchrun rank died of a signal; retrying once. Its output:\n{self.failure(done)}")
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        return done

    @staticmethod
    def root_cause_was_a_signal(stderr: str) -> bool:
        """Whether the rank torchrun names as the first failure ended by a signal (exitcode -N);
        the ranks torchrun itself then stops (SIGTERM) do not count."""
        root = stderr.rpartition("Root Cause")[2]
        code = re.search(r"exitcode\s*:\s*(-?\d+)", root)
        return code is not None and int(code.group(1)) < 0

    @staticmethod
    def failure(done: subprocess.CompletedProcess) -> str:
        """What a failed run printed, for an assertion message: the ranks' own output comes first
        and torchrun's summary last, so both ends."""
        err = done.stderr
        return err if len(err) <= 6000 else f"{err[:3000]}\n[...]\n{err[-3000:]}"


@pytest.fixture
def torchrun() -> Torchrun:
    """Run a torchrun command line (see `Torchrun`)."""
    return Torchrun()
