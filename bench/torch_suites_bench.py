"""torch's own distributed suite with torch's runner and on the harness's rank pools, side by side.

Runs `bench/torch_suites/test_dist_backend.py` (torch's `DistributedTest._DistTestBase`
on `TestDistBackend`, imported from the installed torch, gloo) with pytest in a
subprocess, one run after another on this machine:

- pooled (`--pool-torch-tests`) on the whole suite;
- torch's runner and pooled on the same deterministic subset, every k-th test id
  (torch's runner spawns fresh ranks per test, about 6 s each on 2 cores: the whole
  suite would take half an hour; `--every 1` runs it whole);
- the same for `MultiProcContinuousTest` classes written here (four classes of eight
  tests: torch's runner starts ranks per class, the pools keep theirs).

It prints wall times, the time ratio on the common subset and a table of every test id
whose outcome (or skip reason) differs between the two runners; an empty table means
identical outcomes.

    .venv/bin/python bench/torch_suites_bench.py --every 1             # world size 2, the whole suite (~15 min)
    .venv/bin/python bench/torch_suites_bench.py --world-size 3 --every 10
    .venv/bin/python bench/torch_suites_bench.py --skip-dist            # only the continuous classes
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUITE = "bench/torch_suites/test_dist_backend.py"
CONTINUOUS = "bench/torch_suites/test_continuous.py"
COMMON = ["-p", "no:cacheprovider", "-q", "--tier", "cpu", "-o", "addopts="]


def _env(world_size: int) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "BACKEND": "gloo", "WORLD_SIZE": str(world_size)}


def collect(path: str, world_size: int) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-m", "pytest", *COMMON, "--collect-only", path],
        cwd=ROOT,
        env=_env(world_size),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line for line in out.splitlines() if "::" in line]


def outcomes(junit: Path) -> dict[str, str]:
    """Test id -> "passed", "failed" or "skipped: <reason>", from pytest's JUnit XML."""
    found = {}
    for case in ET.parse(junit).iter("testcase"):
        module, _, cls = case.get("classname", "").rpartition(".")
        nodeid = f"{module.replace('.', '/')}.py::{cls}::{case.get('name')}"
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed"
            elif child.tag == "skipped":
                outcome = f"skipped: {child.get('message', '')}"
        found[nodeid] = outcome
    return found


def run(ids: list[str], world_size: int, pooled: bool) -> tuple[float, dict[str, str]]:
    """Wall time and outcomes of one pytest run of `ids`."""
    with tempfile.TemporaryDirectory() as scratch:
        junit = Path(scratch) / "junit.xml"
        args = [*COMMON, f"--junitxml={junit}", *(["--pool-torch-tests"] if pooled else []), *ids]
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "pytest", *args],
            cwd=ROOT,
            env=_env(world_size),
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - start
        if not junit.exists():
            raise SystemExit(
                f"pytest wrote no report (exit {done.returncode}):\n{done.stdout}\n{done.stderr}"
            )
        summary = [line for line in done.stdout.splitlines() if line.startswith("TORCH TESTS")]
        print(f"  {'pooled' if pooled else 'torch '}: {len(ids)} tests, {wall:.1f} s  {' '.join(summary)}")
        return wall, outcomes(junit)


def compare(name: str, path: str, world_size: int, every: int, whole_pooled: bool) -> None:
    ids = collect(path, world_size)
    subset = ids[::every]
    print(
        f"{name}: world size {world_size}, {len(ids)} test ids, torch's runner on every {every}th ({len(subset)})"
    )
    if whole_pooled and every > 1:
        wall, whole = run(ids, world_size, pooled=True)
        counts = {
            o.split(":")[0]: sum(v.split(":")[0] == o.split(":")[0] for v in whole.values())
            for o in whole.values()
        }
        print(f"  pooled whole suite: {wall:.1f} s, {wall / len(ids):.2f} s/test, {counts}")
    torch_wall, by_torch = run(subset, world_size, pooled=False)
    pooled_wall, by_pool = run(subset, world_size, pooled=True)
    print(
        f"  subset: torch's runner {torch_wall:.1f} s ({torch_wall / len(subset):.2f} s/test), "
        f"pooled {pooled_wall:.1f} s ({pooled_wall / len(subset):.2f} s/test): {torch_wall / pooled_wall:.1f}x"
    )
    differ = sorted(t for t in set(by_torch) | set(by_pool) if by_torch.get(t) != by_pool.get(t))
    print(f"  outcome differences: {len(differ)}")
    for test in differ:
        print(f"    {test}\n      torch:  {by_torch.get(test)}\n      pooled: {by_pool.get(test)}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument(
        "--every", type=int, default=5, help="torch's runner runs every k-th test id (1: all)"
    )
    parser.add_argument("--skip-continuous", action="store_true")
    parser.add_argument("--skip-dist", action="store_true", help="only the MultiProcContinuousTest classes")
    args = parser.parse_args()
    if args.skip_dist and args.skip_continuous:
        parser.error("--skip-dist with --skip-continuous leaves nothing to run")
    if args.world_size < 2 or args.every < 1:
        parser.error(
            f"--world-size {args.world_size} / --every {args.every}: need a world size >= 2 and k >= 1"
        )
    print(
        f"torch {_torch_version()}, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    if not args.skip_dist:
        compare("DistributedTest._DistTestBase", SUITE, args.world_size, args.every, whole_pooled=True)
    if not args.skip_continuous:
        compare("MultiProcContinuousTest classes", CONTINUOUS, args.world_size, 1, whole_pooled=False)


def _torch_version() -> str:
    return subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True
    ).stdout.strip()


if __name__ == "__main__":
    main()
