"""The one exception type for bad user input: its message is a single line that names what is
wrong and how to fix it, and every command-line tool turns it into exit code 2."""


class InputError(ValueError):
    """Bad input from a user: a file, a flag or a config field. One line: what is wrong, and the fix."""
