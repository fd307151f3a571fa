"""What every command-line tool of the workbench shares: a parser whose usage errors are one
line with exit code 2, and a `main` that runs a subcommand and turns an InputError into one
line on stderr with exit code 2."""

from __future__ import annotations

import argparse
import sys
from typing import Callable, NoReturn, Sequence

from ctxsae_common.errors import InputError
from ctxsae_common.threads import set_threads


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line, with exit code 2."""

    def error(self, message: str) -> NoReturn:
        """Print the usage error as one line and exit with code 2."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a finite number above 0 (a learning rate, a scale)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be a finite number above 0")
    return value


def run_command(parser: argparse.ArgumentParser, commands: dict[str, Callable[[argparse.Namespace], int]],
                argv: Sequence[str] | None = None) -> int:
    """Parse `argv`, run `commands[args.command](args)` and return its exit code; a usage error
    or an InputError is one line on stderr and exit code 2, --help exit code 0."""
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    try:
        if hasattr(args, "threads"):  # commands that compute take --threads (`threads.add_threads_flag`)
            set_threads(args.threads)
        return commands[args.command](args)
    except InputError as e:
        print(f"{parser.prog} {args.command}: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
