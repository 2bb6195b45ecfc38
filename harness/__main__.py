"""`python -m harness <command>`: small helpers for the Makefile and CI."""

from __future__ import annotations

import argparse
import sys

from harness import devices


def _gpus(_: argparse.Namespace) -> int:
    print(devices.gpu_count())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("gpus", help="print how many GPUs this machine makes visible").set_defaults(run=_gpus)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
