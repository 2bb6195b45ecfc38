"""`python -m harness <command>`: small helpers for the Makefile and CI."""

from __future__ import annotations

import argparse
import json
import sys

from harness import devices, matrix, report, tiers


def _gpus(_: argparse.Namespace) -> int:
    print(devices.gpu_count())
    return 0


def _matrix(args: argparse.Namespace) -> int:
    jobs = matrix.build(args.cpu_shards, args.multi_gpus, args.image, args.scale_set_prefix)
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
    """The GPU tiers this host can run; "gpu" when it has none, so the run fails loudly."""
    print(",".join(name for name in ("gpu", "multigpu") if not tiers.unsupported_reason(name)) or "gpu")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("gpus", help="print how many GPUs this machine makes visible").set_defaults(run=_gpus)
    report.register(commands)
    ci = commands.add_parser("matrix", help="print the CI job matrix (JSON) derived from the tiers")
    ci.add_argument(
        "--cpu-shards", type=int, default=matrix.DEFAULT_CPU_SHARDS, help="hosted jobs for CPU tiers"
    )
    ci.add_argument(
        "--multi-gpus", type=int, default=matrix.DEFAULT_MULTI_GPUS, help="GPUs per multi-GPU job"
    )
    ci.add_argument("--image", default="", help="GPU job container image (default: GHCR image of this repo)")
    ci.add_argument("--scale-set-prefix", default="", help="GPU jobs target ARC scale set <prefix>-<gpus>")
    ci.add_argument("--github-output", metavar="PATH", help="also append <group>=<json> lines to PATH")
    ci.set_defaults(run=_matrix)
    check = commands.add_parser("check-gpus", help="exit 1 unless at least COUNT GPUs are usable")
    check.add_argument("count", type=int)
    check.set_defaults(run=_check_gpus)
    commands.add_parser(
        "gpu-tiers", help="print the GPU tiers this host can run, for make test-gpu"
    ).set_defaults(run=_gpu_tiers)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
