"""`python -m harness <command>`: small helpers for the Makefile and CI.

Bad input ends in one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from harness import cli, devices, tiers
from harness.ci import durations, inventory, matrix, provision

PROG = "python -m harness"


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return int(text)


def _gpu_count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a GPU count (0 or more)")
    return int(text)


def _gpus(_: argparse.Namespace) -> int:
    print(devices.gpu_count())
    return 0


def _warn(message: str) -> None:
    """On stderr, and as a GitHub annotation inside Actions."""
    prefix = "::warning::" if os.environ.get("GITHUB_ACTIONS") == "true" else "warning: "
    print(prefix + message, file=sys.stderr)


def _matrix(args: argparse.Namespace) -> int:
    entries = inventory.read(args.inventory) if args.inventory else matrix.collect(args.paths)
    served = matrix.served_gpu_counts()
    jobs = matrix.build(entries, args.cpu_shards, args.image, args.scale_set_prefix, served)
    if (warning := matrix.duration_warning(entries, args.durations)) is not None:
        _warn(warning)
    if args.check:
        problems = matrix.check(entries, jobs, served)
        for problem in problems:
            print(f"python -m harness matrix --check: {problem}", file=sys.stderr)
        if problems:
            return 1
        print(f"matrix --check: {len(entries)} tiered tests, {len(jobs)} jobs, every test has a runner class")
        return 0
    matrices = matrix.as_matrices(jobs)
    if args.github_output:
        matrix.write_github_output(matrices, args.github_output)
    print(json.dumps(matrices, indent=2))
    return 0


def _check_gpus(args: argparse.Namespace) -> int:
    ok, message = matrix.check_gpus(args.count)
    print(message, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


def _gpu_tiers(_: argparse.Namespace) -> int:
    print(",".join(tiers.gpu_test_tiers()))
    return 0


def _merge_durations(args: argparse.Namespace) -> int:
    keep = {e.id for e in inventory.read(args.inventory)} if args.inventory else None
    records = [durations.load(p, must_exist=True) for p in args.records]
    merged = durations.merge(durations.load(args.base, must_exist=True), records, keep)
    durations.save(args.out, merged)
    print(f"{len(merged)} durations written to {args.out}")
    return 0


def _provision(args: argparse.Namespace) -> int:
    return provision.main(install=args.install)


def _parser() -> argparse.ArgumentParser:
    parser = cli.OneLineParser(prog=PROG)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("gpus", help="print how many GPUs this machine makes visible").set_defaults(run=_gpus)
    ci = commands.add_parser(
        "matrix", help="print the CI job matrix (JSON) derived from the tiers and the tests"
    )
    ci.add_argument(
        "--cpu-shards",
        type=_positive_int,
        default=matrix.DEFAULT_CPU_SHARDS,
        help="hosted jobs for CPU tiers",
    )
    ci.add_argument("--image", default="", help="GPU job container image (default: GHCR image of this repo)")
    ci.add_argument("--scale-set-prefix", default="", help="GPU jobs target ARC scale set <prefix>-<gpus>")
    ci.add_argument("--github-output", metavar="PATH", help="also append <group>=<json> lines to PATH")
    ci.add_argument(
        "--check",
        action="store_true",
        help="exit 1 if a test needs more GPUs than any runner class, or a label is unserved",
    )
    ci.add_argument(
        "--durations", type=Path, default=Path(matrix.DURATIONS_FILE), help="durations file shards balance on"
    )
    ci.add_argument("--inventory", type=Path, help="use this --harness-inventory file instead of collecting")
    ci.add_argument("paths", nargs="*", help="test paths to collect (default: the project's testpaths)")
    ci.set_defaults(run=_matrix)
    check = commands.add_parser("check-gpus", help="exit 1 unless at least COUNT GPUs are usable")
    check.add_argument("count", type=_gpu_count)
    check.set_defaults(run=_check_gpus)
    commands.add_parser(
        "gpu-tiers", help="print the GPU tiers this host can run, for make test-gpu"
    ).set_defaults(run=_gpu_tiers)
    merge = commands.add_parser(
        "merge-durations", help="lay fresh --record-durations files over a durations file"
    )
    merge.add_argument("records", nargs="+", type=Path, help="files written by --record-durations")
    merge.add_argument(
        "--base", type=Path, default=Path(matrix.DURATIONS_FILE), help="the older durations file"
    )
    merge.add_argument(
        "--out", type=Path, default=Path(matrix.DURATIONS_FILE), help="where to write the result"
    )
    merge.add_argument("--inventory", type=Path, help="drop ids not in this --harness-inventory file")
    merge.set_defaults(run=_merge_durations)
    setup = commands.add_parser(
        "provision",
        help="check this interpreter can run the tests (torch floor, test plugins); install what lacks",
    )
    setup.add_argument("--install", action="store_true", help="pip-install missing test dependencies")
    setup.set_defaults(run=_provision)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a command; bad arguments exit 2 (argparse), bad values raise ValueError."""
    return cli.dispatch(_parser(), argv)


if __name__ == "__main__":
    sys.exit(cli.run(main, PROG))
