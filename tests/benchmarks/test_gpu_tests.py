"""What `benchmarks/gpu_tests.py` records of a pytest run: its summary line and the failed tests."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import gpu_tests  # noqa: E402  (benchmarks/ is a folder of scripts, not a package)

OUTPUT = """..F.                                                                     [100%]
=================================== FAILURES ===================================
___________________________________ test_b ____________________________________
E   AssertionError: FAILED here is not a summary line
=========================== short test summary info ============================
FAILED tests/a/test_x.py::test_b[gated] - AssertionError: W_dec_FD: Tensor-likes are not close!
FAILED tests/c/test_y.py::test_d
1 failed, 3 passed, 270 deselected in 31.85s
"""


def test_the_summary_is_pytests_last_line_without_padding():
    assert gpu_tests.summary_line(OUTPUT) == "1 failed, 3 passed, 270 deselected in 31.85s"
    assert gpu_tests.summary_line("== 28 passed, 156 deselected in 23.67s ==\n\n") == "28 passed, 156 deselected in 23.67s"
    assert gpu_tests.summary_line("") == "(pytest printed nothing)"


def test_the_failed_tests_are_read_from_the_short_summary():
    assert gpu_tests.failed_tests(OUTPUT) == ["tests/a/test_x.py::test_b[gated]", "tests/c/test_y.py::test_d"]
    assert gpu_tests.failed_tests("3 passed in 1s\n") == []
