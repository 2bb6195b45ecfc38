"""`python -m ackit report`: every AC mode on the reference models (was `python -m harness report`)."""

from __future__ import annotations

import argparse
import sys

from ackit import report
from harness import cli

PROG = "python -m ackit"


def _parser() -> argparse.ArgumentParser:
    parser = cli.OneLineParser(prog=PROG)
    report.register(parser.add_subparsers(dest="command", required=True))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a command; bad arguments exit 2 (argparse), bad values raise ValueError."""
    return cli.dispatch(_parser(), argv)


if __name__ == "__main__":
    sys.exit(cli.run(main, PROG))
