"""Two-rank tests: harness.ranks pools against torch's MultiProcContinuousTest and MultiProcessTestCase.

Writes the same 40 two-rank tests (8 modules x 5, gloo on CPU) for each
framework into a scratch directory, runs each with pytest in a subprocess on
this machine, one after another, and prints wall time, per-test cost and, for
ours, the per-test time of a warm pool (every test but the first of a run).
`ours-messy` runs the same tests each leaving state behind (seed, default
dtype, grad mode, threads, cwd, sys.path, a process subgroup, a child process)
that the pool must put back before the next test: its warm-pool figure is the
cost of a clean start per test.

    .venv/bin/python bench/ranks_bench.py                  # all four
    .venv/bin/python bench/ranks_bench.py --only ours ours-messy
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

MODULES, TESTS = 8, 5

STEPS = ("t = torch.ones(4) * {rank}", "dist.all_reduce(t)", "assert t[0].item() == 1")


def _body(rank: str, indent: str, *extra: str) -> str:
    return "".join(f"{indent}{line}\n" for line in (*extra[:1], *STEPS, *extra[1:])).format(rank=rank)


OURS = """import pytest
import torch
import torch.distributed as dist

""" + "".join(
    f"\n@pytest.mark.world_size(2)\ndef test_{k}():\n" + _body("dist.get_rank()", "    ")
    for k in range(TESTS)
)

MESSY_STEPS = (
    "torch.manual_seed(1234)",
    "torch.set_default_dtype(torch.float64)",
    "torch.set_grad_enabled(False)",
    "torch.set_num_threads(torch.get_num_threads() + 1)",
    "dist.new_group([0, 1])",
    "os.chdir(tempfile.gettempdir())",
    "sys.path.append(tempfile.gettempdir())",
    "subprocess.Popen(['sleep', '60'])",
)

OURS_MESSY = """import os, subprocess, sys, tempfile
import pytest
import torch
import torch.distributed as dist

""" + "".join(
    f"\n@pytest.mark.world_size(2)\ndef test_{k}():\n"
    + _body("dist.get_rank()", "    ", *MESSY_STEPS[:1])
    + "".join(f"    {step}\n" for step in MESSY_STEPS[1:])
    for k in range(TESTS)
)

CONTINUOUS = """import torch
import torch.distributed as dist
from torch.testing._internal.common_distributed import MultiProcContinuousTest


class TestModule{m}(MultiProcContinuousTest):
    world_size = 2

    @classmethod
    def backend_str(cls):
        return "gloo"

    @classmethod
    def device_type(cls):
        return "cpu"
""" + "".join(f"\n    def test_{k}(self):\n" + _body("self.rank", 8 * " ") for k in range(TESTS))

PER_TEST = """import torch
import torch.distributed as dist
from torch.testing._internal.common_distributed import MultiProcessTestCase


class TestModule{m}(MultiProcessTestCase):
    @property
    def world_size(self):
        return 2

    def setUp(self):
        super().setUp()
        self._spawn_processes()

    def _init(self):
        store = dist.FileStore(self.file_name, self.world_size)
        dist.init_process_group("gloo", store=store, rank=self.rank, world_size=self.world_size)
""" + "".join(
    f"\n    def test_{k}(self):\n"
    + _body("self.rank", 8 * " ", "self._init()", "dist.destroy_process_group()")
    for k in range(TESTS)
)

FRAMEWORKS = {
    "ours": (OURS, ["--tier", "cpu"]),
    "ours-messy": (OURS_MESSY, ["--tier", "cpu", "-W", "ignore::pytest.PytestWarning"]),
    "continuous": (CONTINUOUS, []),
    "per-test": (PER_TEST, []),
}
LABELS = {
    "ours": "harness.ranks (pooled ranks)",
    "ours-messy": "harness.ranks, state to put back",
    "continuous": "MultiProcContinuousTest",
    "per-test": "MultiProcessTestCase",
}


def write_suite(root: Path, name: str) -> Path:
    suite = root / name
    suite.mkdir()
    (suite / "pytest.ini").write_text("[pytest]\n")
    template = FRAMEWORKS[name][0]
    for m in range(MODULES):
        (suite / f"test_mod{m}.py").write_text(template.format(m=m) if "{m}" in template else template)
    return suite


def run(suite: Path, name: str) -> tuple[float, list[float], str]:
    report = suite / "report.xml"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}"]
    start = time.perf_counter()
    done = subprocess.run(command + FRAMEWORKS[name][1], cwd=suite, capture_output=True, text=True)
    wall = time.perf_counter() - start
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-500:]
    times = [float(case.get("time", 0)) for case in ET.parse(report).getroot().iter("testcase")]
    return wall, times, summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(FRAMEWORKS), default=list(FRAMEWORKS))
    args = parser.parse_args(argv)
    results = {}
    with tempfile.TemporaryDirectory(prefix="ranks-bench-") as scratch:
        for name in args.only:
            wall, times, summary = run(write_suite(Path(scratch), name), name)
            results[name] = wall
            line = f"{LABELS[name]:<30} {wall:7.1f} s wall  {wall / (MODULES * TESTS) * 1000:7.0f} ms/test"
            if name.startswith("ours") and len(times) > 1:
                line += f"  warm pool: median {statistics.median(times[1:]) * 1000:.1f} ms/test"
            print(f"{line}   [{summary}]", flush=True)
    if "ours" in results:
        for name, wall in results.items():
            if not name.startswith("ours"):
                print(f"ours is {wall / results['ours']:.1f}x faster than {LABELS[name]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
