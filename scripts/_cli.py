"""Shared command-line plumbing: bad input is one line on stderr and exit status 2."""

import argparse
import sys
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from modules.errors import ConfigError  # noqa: E402

EXIT_BAD_INPUT = 2


@contextmanager
def user_errors(program: str):
    """Turn ConfigError (and unreadable files) into `program: error: ...` and exit 2."""
    try:
        yield
    except ConfigError as error:
        print(f"{program}: error: {error}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (`program: error: ...`) and exit status 2, like every other error."""

    def error(self, message: str):
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (the message names the value)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def write_output(path: str, writer) -> None:
    """`writer(path)` after creating the folder; a failure to write is one line naming the file."""
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        writer(path)
    except OSError as error:
        raise ConfigError(f"cannot write '{path}': {error.strerror}") from None
