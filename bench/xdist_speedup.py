"""Wall time of the CPU tier with xdist workers against none, side by side.

Runs `pytest --tier cpu -n 0` and `-n N --dist worksteal` (as `make test-cpu`) alternately (so machine noise hits
both alike) and prints the median of each and the speed-up.

    .venv/bin/python bench/xdist_speedup.py --workers 2 --repeats 2
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time


def wall_time(workers: int, extra: list[str]) -> float:
    command = [
        sys.executable,
        "-m",
        "pytest",
        "--tier",
        "cpu",
        "-n",
        str(workers),
        "--dist",
        "worksteal",
        "-q",
        "-p",
        "no:cacheprovider",
    ]
    start = time.perf_counter()
    run = subprocess.run(command + extra, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if run.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{run.stdout[-3000:]}{run.stderr[-3000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=2, help="xdist workers to compare against -n 0")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each configuration")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments")
    args = parser.parse_args()
    if args.workers < 1 or args.repeats < 1:
        parser.error(f"--workers={args.workers} and --repeats={args.repeats} must both be at least 1")
    times: dict[int, list[float]] = {0: [], args.workers: []}
    for repeat in range(args.repeats):
        for workers in times:
            times[workers].append(wall_time(workers, args.pytest_args))
            print(
                f"run {repeat + 1}/{args.repeats}: -n {workers}: {times[workers][-1]:.1f} s", file=sys.stderr
            )
    serial, parallel = (statistics.median(times[w]) for w in times)
    print(f"-n 0: {serial:.1f} s   -n {args.workers}: {parallel:.1f} s   speed-up {serial / parallel:.2f}x")


if __name__ == "__main__":
    main()
