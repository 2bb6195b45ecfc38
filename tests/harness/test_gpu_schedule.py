"""GPU tests run largest and longest first, handed out one at a time to the workers."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import pytest

from harness import devices, gpu_schedule
from tests.harness.inner_pytest import run_pytest

pytestmark = [pytest.mark.tiers("cpu"), pytest.mark.timeout(60)]


@dataclass(frozen=True)
class Collected:
    nodeid: str
    gpus: int


def test_order_is_most_gpus_then_longest_with_unrecorded_tests_at_the_median():
    tests = [
        Collected("one_short", 1),
        Collected("one_long", 1),
        Collected("one_new", 1),
        Collected("eight", 8),
        Collected("two", 2),
    ]
    recorded = {"one_short": 1.0, "one_long": 9.0, "eight": 2.0, "two": 3.0}
    ordered = gpu_schedule.need_first(tests, lambda t: t.gpus, recorded)
    # one_new counts as the median recorded test (2.5 s): between one_long and one_short.
    assert [t.nodeid for t in ordered] == ["eight", "two", "one_long", "one_new", "one_short"]


@dataclass(eq=False)  # hashed by identity, as xdist's workers are
class Worker:
    """What NeedFirstScheduling uses of xdist's WorkerController."""

    name: str
    received: list[int] = field(default_factory=list)
    shutting_down: bool = False

    def send_runtest_some(self, indices: list[int]) -> None:
        self.received.extend(indices)

    def shutdown(self) -> None:
        self.shutting_down = True


def _started(workers: int, tests: int) -> tuple[gpu_schedule.NeedFirstScheduling, list[Worker]]:
    scheduler = gpu_schedule.NeedFirstScheduling(workers, log=lambda *args: None)
    nodes = [Worker(f"gw{i}") for i in range(workers)]
    ids = [f"t{i}" for i in range(tests)]
    for node in nodes:
        scheduler.add_node(node)
        assert not scheduler.collection_is_completed  # nothing goes out before every worker collected
        scheduler.add_node_collection(node, ids)
    scheduler.schedule()
    return scheduler, nodes


def test_tests_go_out_in_order_one_per_worker_then_one_to_each_that_finished():
    scheduler, (a, b) = _started(2, 6)
    assert (a.received, b.received) == ([0, 2], [1, 3])  # each runs one and holds the next
    scheduler.mark_test_complete(b, 1)
    scheduler.mark_test_complete(a, 0)
    assert (a.received, b.received) == ([0, 2, 5], [1, 3, 4])
    assert not scheduler.tests_finished
    scheduler.mark_test_complete(a, 2)
    assert a.shutting_down and not b.shutting_down  # nothing left to send: a runs its last one
    scheduler.mark_test_complete(b, 3)
    assert scheduler.tests_finished and b.shutting_down


def test_a_crashed_worker_names_its_running_test_and_its_next_goes_first():
    scheduler, (a, b) = _started(2, 6)
    assert scheduler.remove_node(a) == "t0"
    scheduler.mark_test_complete(b, 1)
    assert b.received == [1, 3, 2]


NEEDS = """
import time
import pytest

@pytest.mark.tiers("gpu")
@pytest.mark.parametrize("seconds", [0.1, 0.3, 0.2])
def test_one(tier, seconds):
    time.sleep(0.05)

@pytest.mark.tiers("multigpu")
@pytest.mark.gpus(2)
def test_two(tier):
    pass

@pytest.mark.tiers("multigpu")
@pytest.mark.gpus(8)
def test_eight(tier):
    pass
"""


def test_a_gpu_run_under_xdist_starts_tests_by_need_then_recorded_duration(tmp_path):
    """One worker runs the tests in the order the scheduler hands them out."""
    (tmp_path / "pytest.ini").write_text("[pytest]\nharness = true\n")
    (tmp_path / "test_needs.py").write_text(NEEDS)
    recorded = {f"test_needs.py::test_one[gpu-{s}]": s for s in (0.1, 0.3, 0.2)}
    (tmp_path / ".test_durations").write_text(json.dumps(recorded))
    log = tmp_path / "leases.jsonl"
    env = {
        **os.environ,
        devices.FAKE_GPUS_ENV: "8",
        devices.LEASE_DIR_ENV: str(tmp_path / "locks"),
        devices.LEASE_LOG_ENV: str(log),
        devices.LEASE_TIMEOUT_ENV: "15",
    }
    env.pop(devices.PHYSICAL_GPUS_ENV, None)
    run = run_pytest(tmp_path, "-n", "1", "--tier", "gpu,multigpu", env=env, timeout=50)
    assert "5 passed" in run.stdout, run.stdout + run.stderr
    acquired = [e["holder"] for e in map(json.loads, log.read_text().splitlines()) if e["event"] == "acquire"]
    assert [holder.split("::")[1] for holder in acquired] == [
        "test_eight[multigpu]",
        "test_two[multigpu]",
        "test_one[gpu-0.3]",
        "test_one[gpu-0.2]",
        "test_one[gpu-0.1]",
    ]
