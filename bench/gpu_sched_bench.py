"""GPU test scheduling on a fake 8-GPU host: this checkout against a baseline, side by side.

Writes a synthetic suite of sleep-bodied tests needing 1, 2, 4 and 8 GPUs (each
mix below), with their durations recorded in `.test_durations`, and runs it
with `HARNESS_FAKE_GPUS=8 pytest --tier gpu,multigpu -n 8` as `make test-gpu`
runs on 8 GPUs: once with the harness of `--baseline` (a git ref, run with
`--dist worksteal` as before this scheduler) and once with this checkout's.
From the lease log and each test's setup time it reports, per run:

- busy: GPU-seconds leased over 8 x the test phase (first lease to last release);
- makespan / bound: the phase over max(GPU-seconds / 8, longest test);
- large wait: the longest a test needing 4+ GPUs waited from its setup to its lease;
- 8-GPU start: the latest start of an 8-GPU test, as a share of the phase;
- start-up: from launching pytest to the first test's setup (workers importing torch);
- overlap: device double use found in the lease log (must be 0).

    python bench/gpu_sched_bench.py [--scale 0.5] [--mix issue,skewed] [--baseline main]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GPUS = 8
# (count, GPUs each, shortest s, longest s) per group; durations drawn uniformly, seeded.
MIXES: dict[str, list[tuple[int, int, float, float]]] = {
    "issue": [(24, 1, 1, 4), (8, 2, 2, 5), (6, 4, 3, 6), (2, 8, 4, 6)],
    # Many short 1-GPU tests, a few long 2-GPU ones, short large ones: small tests must not
    # crowd the 8-GPU tests out, and the long 2-GPU tests must start early.
    "skewed": [(48, 1, 0.5, 2), (4, 2, 6, 9), (4, 4, 1, 2), (3, 8, 2, 3)],
}

CONFTEST = """
import json, os, time
import pytest

@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    with open(os.environ["BENCH_SETUPS"], "a") as out:
        out.write(json.dumps({"id": item.nodeid, "t": time.time()}) + "\\n")
"""

TEST = """
import time
import pytest

@pytest.mark.tiers({tier!r})
@pytest.mark.gpus({gpus})
def test_{name}(tier):
    time.sleep({seconds})
"""


@dataclass(frozen=True)
class Case:
    name: str
    gpus: int
    seconds: float


def cases(mix: str, scale: float) -> list[Case]:
    rng = random.Random(0)
    made = []
    for count, gpus, low, high in MIXES[mix]:
        for i in range(count):
            made.append(Case(f"g{gpus}_{i}", gpus, round(rng.uniform(low, high) * scale, 3)))
    rng.shuffle(made)  # collection order says nothing about need
    return made


def write_suite(folder: Path, suite: list[Case]) -> None:
    folder.mkdir(parents=True)
    (folder / "pytest.ini").write_text("[pytest]\nharness = true\n")
    (folder / "conftest.py").write_text(CONFTEST)
    body = "".join(
        TEST.format(tier="gpu" if c.gpus == 1 else "multigpu", gpus=c.gpus, name=c.name, seconds=c.seconds)
        for c in suite
    )
    (folder / "test_suite.py").write_text(body)
    recorded = {
        f"test_suite.py::test_{c.name}[{'gpu' if c.gpus == 1 else 'multigpu'}]": c.seconds for c in suite
    }
    (folder / ".test_durations").write_text(json.dumps(recorded))


def baseline_tree(ref: str, into: Path) -> Path:
    """The harness package as it is at `ref`, to import instead of this checkout's."""
    archive = subprocess.run(["git", "archive", ref, "harness"], cwd=ROOT, capture_output=True, check=True)
    with tarfile.open(fileobj=BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    return into


def run(suite_dir: Path, harness_root: Path, extra: list[str], label: str) -> dict[str, float]:
    log, setups = suite_dir / f"{label}-leases.jsonl", suite_dir / f"{label}-setups.jsonl"
    env = {
        **os.environ,
        "HARNESS_FAKE_GPUS": str(GPUS),
        "HARNESS_LEASE_DIR": str(suite_dir / f"{label}-locks"),
        "HARNESS_LEASE_LOG": str(log),
        "HARNESS_LEASE_TIMEOUT": "300",
        "BENCH_SETUPS": str(setups),
        "PYTHONPATH": str(harness_root),
    }
    command = [sys.executable, "-m", "pytest", "--tier", "gpu,multigpu"]
    command += ["-n", str(GPUS), "-q", "-p", "no:cacheprovider", "-p", "no:randomly", *extra]
    launched = time.time()
    done = subprocess.run(command, cwd=suite_dir, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{label}: {' '.join(command)} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return measure(log, setups, launched)


def intervals(log: Path) -> list[tuple[float, float, str, list[str]]]:
    opened: dict[str, float] = {}
    spans = []
    for line in log.read_text().splitlines():
        entry = json.loads(line)
        if entry["event"] == "acquire":
            opened[entry["holder"]] = entry["t"]
        else:
            spans.append((opened.pop(entry["holder"]), entry["t"], entry["holder"], entry["devices"]))
    return spans


def overlaps(spans: list[tuple[float, float, str, list[str]]]) -> int:
    found = 0
    for i, (start, end, _, held) in enumerate(spans):
        for other_start, other_end, _, other_held in spans[i + 1 :]:
            if start < other_end and other_start < end and set(held) & set(other_held):
                found += 1
    return found


def measure(log: Path, setups_file: Path, launched: float) -> dict[str, float]:
    spans = intervals(log)
    setups = {json.loads(line)["id"]: json.loads(line)["t"] for line in setups_file.read_text().splitlines()}
    begin, end = min(s[0] for s in spans), max(s[1] for s in spans)
    phase = end - begin
    gpu_seconds = sum((stop - start) * len(held) for start, stop, _, held in spans)
    large = [(start, holder) for start, _, holder, held in spans if len(held) >= 4]
    whole = [start for start, _, _, held in spans if len(held) == GPUS]
    return {
        "phase": phase,
        "busy": gpu_seconds / (GPUS * phase),
        "large_wait": max((start - setups[holder] for start, holder in large), default=0.0),
        "last_8gpu_start": max((start - begin for start in whole), default=0.0) / phase,
        "startup": min(setups.values()) - launched,
        "overlaps": overlaps(spans),
    }


def bound(suite: list[Case]) -> float:
    return max(sum(c.seconds * c.gpus for c in suite) / GPUS, max(c.seconds for c in suite))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every sleep (default 1)")
    parser.add_argument("--mix", default=",".join(MIXES), help=f"comma list from {list(MIXES)}")
    parser.add_argument(
        "--baseline", default="main", help="git ref of the harness to compare with (default main)"
    )
    args = parser.parse_args()
    mixes = [m for m in args.mix.split(",") if m]
    if not all(m in MIXES for m in mixes) or not args.scale > 0:
        parser.error(f"--mix {args.mix!r} must name mixes from {list(MIXES)}; --scale must be above 0")
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="gpu-sched-bench-") as tmp:
        base = baseline_tree(args.baseline, Path(tmp) / "baseline")
        header = "| mix | scheduler | phase s | bound s | makespan / bound | busy | large wait s | last 8-GPU start | start-up s | overlaps |"
        print(header)
        print("|" + "---|" * (header.count("|") - 1))
        for mix in mixes:
            suite = cases(mix, args.scale)
            folder = Path(tmp) / mix
            write_suite(folder, suite)
            lower = bound(suite)
            for label, root, extra in (
                (f"{args.baseline} worksteal", base, ["--dist", "worksteal"]),
                ("need-first", ROOT, []),
            ):
                got = run(folder, root, extra, label.replace(" ", "-"))
                print(
                    f"| {mix} | {label} | {got['phase']:.1f} | {lower:.1f} | {got['phase'] / lower:.2f}x "
                    f"| {got['busy']:.0%} | {got['large_wait']:.1f} | {got['last_8gpu_start']:.0%} of phase "
                    f"| {got['startup']:.1f} | {got['overlaps']:.0f} |",
                    flush=True,
                )
    print(f"load average after: {os.getloadavg()[0]:.2f}", file=sys.stderr)


if __name__ == "__main__":
    main()
