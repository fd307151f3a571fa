"""The shared argparse pieces (`ctxsae_common.cli`): a usage error is one line with exit code 2,
naming the flag and what it takes."""

import pytest

from ctxsae_common.cli import OneLineParser, positive_float, positive_int


def _parser() -> OneLineParser:
    p = OneLineParser(prog="tool")
    p.add_argument("--n", type=positive_int)
    p.add_argument("--lr", type=positive_float)
    return p


def test_positive_numbers_parse():
    args = _parser().parse_args(["--n", "3", "--lr", "3e-3"])
    assert args.n == 3 and args.lr == pytest.approx(0.003)


@pytest.mark.parametrize("argv,message", [
    (["--n", "0"], "argument --n: 0 must be at least 1"),
    (["--n", "2.5"], "argument --n: '2.5' is not an integer"),
    (["--lr", "0"], "argument --lr: 0 must be a finite number above 0"),
    (["--lr=-1e-3"], "argument --lr: -1e-3 must be a finite number above 0"),
    (["--lr", "nan"], "argument --lr: nan must be a finite number above 0"),
    (["--lr", "inf"], "argument --lr: inf must be a finite number above 0"),
    (["--lr", "fast"], "argument --lr: 'fast' is not a number"),
])
def test_a_bad_number_is_one_line_and_exit_code_2(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        _parser().parse_args(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1
    assert err == f"tool: error: {message} (see tool --help)\n"
