"""The tests' torchrun helper (`tests/conftest.py`): a run whose root cause was a signal is retried
once, unless the test made it fail on purpose."""

import sys
from contextlib import nullcontext

import pytest

from tests.conftest import Torchrun

# stands in for torchrun: counts its runs, and reports rank 0 as ended by SIGABRT
FAKE = """import sys
open(sys.argv[1], "a").write("run\\n")
sys.stderr.write("Root Cause (first observed failure):\\n  exitcode  : -6 (pid: 1)\\n")
sys.exit(1)
"""


@pytest.mark.parametrize("retry, runs", [(True, 2), (False, 1)])
def test_a_signalled_run_is_retried_once_unless_it_was_made_to_fail(tmp_path, retry, runs):
    counter = tmp_path / "runs.txt"
    cmd = [sys.executable, "-c", FAKE, str(counter)]
    warned = pytest.warns(UserWarning, match="died of a signal; retrying once") if retry else nullcontext()
    with warned:
        done = Torchrun()(cmd, retry=retry)
    assert done.returncode == 1
    assert counter.read_text().count("run") == runs
