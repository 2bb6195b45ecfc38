"""What every `python -m ...` command of this project shares: bad input is one line
on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import NoReturn


class OneLineParser(argparse.ArgumentParser):
    """argparse, with its errors on one line (subcommand parsers inherit this class)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def dispatch(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    """Parse `argv` and run the subcommand it names (each sets `run` as its default)."""
    args = parser.parse_args(argv)
    return args.run(args)


def run(main: Callable[[list[str] | None], int], prog: str, argv: list[str] | None = None) -> int:
    """`main` for a shell: a ValueError or an OSError (a path that is a folder, a file it
    cannot write) becomes one line on stderr and exit code 2."""
    try:
        return main(argv)
    except (ValueError, OSError) as error:
        command = (argv if argv is not None else sys.argv[1:])[:1]
        print(f"{prog} {' '.join(command)}: error: {error}", file=sys.stderr)
        return 2
