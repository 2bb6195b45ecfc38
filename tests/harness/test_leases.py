"""GPU leases: disjoint, all-or-nothing, released on failure, pinned per worker.

The end-to-end test runs several xdist workers against 8 fake GPUs and checks
the lease log, so the same logic that packs real GPUs is proven on CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from harness import devices, lease_queue
from tests.harness.inner_pytest import run_pytest

# A self-test fails within 60 s when what it checks hangs, not at the suite-wide 600 s.
pytestmark = [pytest.mark.tiers("cpu"), pytest.mark.timeout(60)]


@pytest.fixture
def fake_host(monkeypatch, tmp_path):
    """Eight fake GPUs with a private lock directory and lease log."""
    for name in (devices.PHYSICAL_GPUS_ENV, devices.HOME_GPU_ENV, "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(devices.FAKE_GPUS_ENV, "8")
    monkeypatch.setenv(devices.LEASE_DIR_ENV, str(tmp_path / "locks"))
    monkeypatch.setenv(devices.LEASE_LOG_ENV, str(tmp_path / "leases.jsonl"))
    return tmp_path


def test_leases_are_disjoint_while_held(fake_host):
    with devices.lease(3, "a") as first, devices.lease(5, "b") as second:
        assert len(first) == 3 and len(second) == 5
        assert not set(first) & set(second)


def test_lease_is_all_or_nothing_and_times_out_naming_the_holder(fake_host):
    with (
        devices.lease(6, "big"),
        pytest.raises(devices.LeaseTimeout, match=r"needy waited 0s for 4 free GPU"),
    ):
        devices.lease(4, "needy", timeout=0.2).__enter__()
    # The failed attempt released its partial set: all eight are free again.
    with devices.lease(8, "all") as everything:
        assert len(everything) == 8


def test_asking_for_more_than_visible_fails_at_once(fake_host):
    with pytest.raises(devices.LeaseTimeout, match=r"needs 9 GPU\(s\); only 8 are visible"):
        devices.lease(9, "greedy").__enter__()


def test_lease_is_released_when_the_body_raises(fake_host):
    with pytest.raises(RuntimeError), devices.lease(8, "crashing"):
        raise RuntimeError("test body failed")
    with devices.lease(8, "next"):
        pass


def test_waiting_lease_gets_devices_when_released(fake_host):
    got: list[list[str]] = []
    with devices.lease(8, "holder"):
        waiter = threading.Thread(
            target=lambda: got.append(devices.lease(2, "waiter", timeout=10).__enter__())
        )
        waiter.start()
        time.sleep(0.2)
        assert not got
    waiter.join(10)
    assert len(got[0]) == 2


def test_one_gpu_lease_waits_for_the_workers_home_device(fake_host, monkeypatch):
    """A pinned worker's one-GPU test runs on its home device: while that is busy it waits,
    though seven others are free, and times out naming what it waited for."""
    monkeypatch.setenv(devices.HOME_GPU_ENV, "fake5")
    with devices.lease(1, "mine") as mine:
        assert mine == ["fake5"]
    with (
        devices.lease(1, "other", timeout=0) as other,
        pytest.raises(devices.LeaseTimeout, match=r"waiter waited 0s for 1 free GPU"),
    ):
        assert other == ["fake5"]
        devices.lease(1, "waiter", timeout=0.1).__enter__()


def test_multi_gpu_lease_starts_at_the_home_device_and_takes_the_next_free(fake_host, monkeypatch):
    monkeypatch.setenv(devices.HOME_GPU_ENV, "fake5")
    with devices.lease(3, "first") as first:
        assert first == ["fake0", "fake1", "fake5"]  # home first, then in order; handed back sorted
        with devices.lease(2, "second", timeout=1) as second:
            assert second == ["fake2", "fake3"]  # home busy: a multi-GPU lease does not wait for it


def test_without_a_home_device_leases_take_the_first_free(fake_host, monkeypatch):
    monkeypatch.setenv(devices.HOME_GPU_ENV, "fake9")  # not on this host: no preference
    with devices.lease(1, "a") as a, devices.lease(2, "b") as b:
        assert (a, b) == (["fake0"], ["fake1", "fake2"])


def test_every_lease_is_logged_when_acquired_and_released(fake_host):
    with devices.lease(2, "first"), devices.lease(1, "second"):
        pass
    log = [json.loads(line) for line in (fake_host / "leases.jsonl").read_text().splitlines()]
    assert [(e["event"], e["devices"], e["holder"]) for e in log] == [
        ("acquire", ["fake0", "fake1"], "first"),
        ("acquire", ["fake2"], "second"),
        ("release", ["fake2"], "second"),
        ("release", ["fake0", "fake1"], "first"),
    ]
    assert [e["t"] for e in log] == sorted(e["t"] for e in log)


def test_a_lease_log_that_cannot_be_written_releases_the_locks(fake_host, monkeypatch):
    monkeypatch.setenv(devices.LEASE_LOG_ENV, str(fake_host))  # a directory: every write fails
    with pytest.raises(IsADirectoryError), devices.lease(8, "unlogged"):
        pass
    monkeypatch.delenv(devices.LEASE_LOG_ENV)
    with devices.lease(8, "next", timeout=0) as everything:
        assert len(everything) == 8


def _stream_leases(stop: threading.Event, count: int, hold_s: float) -> None:
    while not stop.is_set():
        with devices.lease(count, "small", timeout=10):
            time.sleep(hold_s)


def test_a_large_lease_is_not_starved_by_a_stream_of_small_ones(fake_host):
    """Eight threads re-lease one GPU each the moment they release it: all eight are
    never free at once by chance, so only held devices let the large lease in."""
    stop = threading.Event()
    streams = [threading.Thread(target=_stream_leases, args=(stop, 1, 0.05)) for _ in range(8)]
    for stream in streams:
        stream.start()
    try:
        time.sleep(0.3)
        start = time.monotonic()
        with devices.lease(8, "large", timeout=10) as everything:
            waited = time.monotonic() - start
    finally:
        stop.set()
        for stream in streams:
            stream.join(15)
    assert len(everything) == 8
    assert waited < 8 * lease_queue.HEAD_START_PER_GPU_S + 1.0


STREAMING_SESSION = """
import sys, threading, time
from harness import devices

def stream():
    while time.monotonic() < end:
        with devices.lease(1, "other-session", timeout=10):
            time.sleep(0.05)

end = time.monotonic() + float(sys.argv[1])
threads = [threading.Thread(target=stream) for _ in range(8)]
for t in threads:
    t.start()
print("streaming", flush=True)
for t in threads:
    t.join()
"""


def test_a_two_gpu_lease_is_granted_while_another_session_streams_one_gpu_leases(fake_host):
    other = subprocess.Popen(
        [sys.executable, "-c", STREAMING_SESSION, "8"],
        env={**os.environ, "PYTHONPATH": str(Path(devices.__file__).parents[1])},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert other.stdout.readline().strip() == "streaming"
        time.sleep(0.3)
        start = time.monotonic()
        with devices.lease(2, "this-session", timeout=7) as pair:
            waited = time.monotonic() - start
        assert len(pair) == 2
        assert waited < 2 * lease_queue.HEAD_START_PER_GPU_S + 1.0
    finally:
        other.kill()
        other.wait()


def test_a_request_behind_a_waiting_one_takes_only_what_leaves_enough_for_it():
    free = ["g0", "g1", "g2"]
    waiting_pair = [lease_queue.Ticket(rank=0.0, count=2, home=None)]
    one, two = lease_queue.Ticket(1.0, 1, None), lease_queue.Ticket(1.0, 2, None)
    assert lease_queue.grant(one, free, free, waiting_pair) == ["g0"]
    assert lease_queue.grant(two, free, free, waiting_pair) is None
    assert lease_queue.grant(two, free, free, []) == ["g0", "g1"]


def test_a_waiting_one_gpu_lease_holds_only_its_own_device():
    free = ["g0", "g1"]
    waiting_home = [lease_queue.Ticket(rank=0.0, count=1, home="g1")]
    assert lease_queue.grant(lease_queue.Ticket(1.0, 1, "g1"), free, ["g1"], waiting_home) is None
    assert lease_queue.grant(lease_queue.Ticket(1.0, 1, "g0"), free, ["g0"], waiting_home) == ["g0"]


def test_a_large_burst_arriving_together_is_served_largest_first(fake_host):
    """Tickets rank by arrival minus a head start per GPU: an 8-GPU request that arrives
    a moment after a 1-GPU one is still ahead of it."""
    lock_dir = fake_host / "locks"
    lock_dir.mkdir()
    with lease_queue.waiting(lock_dir, 1, None) as small, lease_queue.waiting(lock_dir, 8, None) as large:
        assert lease_queue.ahead_of(lock_dir, small) == [large]
        assert lease_queue.ahead_of(lock_dir, large) == []


def test_a_ticket_whose_waiter_died_is_dropped(fake_host):
    lock_dir = fake_host / "locks"
    lock_dir.mkdir()
    code = (
        "import sys; from pathlib import Path; from harness import lease_queue; "
        "held = lease_queue.waiting(Path(sys.argv[1]), 8, None); held.__enter__(); print('ok', flush=True); "
        "import os; os._exit(0)"  # dies without cleaning up, as a killed process does
    )
    dead = subprocess.run(
        [sys.executable, "-c", code, str(lock_dir)],
        env={**os.environ, "PYTHONPATH": str(Path(devices.__file__).parents[1])},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert dead.stdout.strip() == "ok", dead.stderr
    assert (
        len(list(lock_dir.glob(lease_queue.TICKET_PREFIX + "*"))) == 1
    )  # left behind by the process that died
    with lease_queue.waiting(lock_dir, 1, None) as mine:
        assert lease_queue.ahead_of(lock_dir, mine) == []
    assert list(lock_dir.glob(lease_queue.TICKET_PREFIX + "*")) == []


def test_the_lease_timeout_comes_from_the_environment_and_the_error_names_the_wait(fake_host, monkeypatch):
    monkeypatch.setenv(devices.LEASE_TIMEOUT_ENV, "0.2")
    gpus = [f"fake{i}" for i in range(8)]
    with devices.lease(8, "all"), pytest.raises(devices.LeaseTimeout) as error:
        devices.lease(1, "late").__enter__()
    assert str(error.value) == f"late waited 0s for 1 free GPU(s) of {gpus} in {fake_host / 'locks'}"


def test_locks_default_to_a_per_user_folder_in_the_temp_dir(monkeypatch):
    monkeypatch.delenv(devices.LEASE_DIR_ENV, raising=False)
    expected = Path(tempfile.gettempdir()) / f"harness-gpu-leases-{os.getuid()}"
    assert devices.lease_dir() == expected and expected.is_dir()


def test_worker_pinning_indexes_the_callers_visible_list(monkeypatch):
    """The controller recorded the caller's list "3,5" (as on a host showing GPUs 3 and 5)."""
    monkeypatch.delenv(devices.FAKE_GPUS_ENV, raising=False)
    monkeypatch.setenv(devices.PHYSICAL_GPUS_ENV, "3,5")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    pinned = [devices.pin_worker(f"gw{i}") for i in range(3)]
    assert pinned == ["3", "5", "3"]
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3"
    assert devices.visible_gpus() == ["3", "5"]


def test_only_xdist_workers_on_a_host_with_gpus_get_a_home_device(monkeypatch):
    monkeypatch.delenv(devices.FAKE_GPUS_ENV, raising=False)
    monkeypatch.delenv(devices.HOME_GPU_ENV, raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    monkeypatch.setenv(devices.PHYSICAL_GPUS_ENV, "3,5")
    assert devices.pin_worker("master") is None
    monkeypatch.setenv(devices.PHYSICAL_GPUS_ENV, "")
    assert devices.pin_worker("gw0") is None
    assert devices.HOME_GPU_ENV not in os.environ and os.environ["CUDA_VISIBLE_DEVICES"] == "3,5"


def test_bad_fake_gpu_count_is_named(monkeypatch):
    monkeypatch.setenv(devices.FAKE_GPUS_ENV, "eight")
    with pytest.raises(ValueError, match=r"HARNESS_FAKE_GPUS='eight' must be an integer from 0 to 16"):
        devices.fake_gpu_count()


PACKING_TESTS = """
import os
import time

import pytest

from harness import devices


@pytest.mark.tiers("gpu")
@pytest.mark.parametrize("i", range(12))
def test_one_gpu(tier, i):
    assert tier.gpu_ids == (os.environ[devices.HOME_GPU_ENV],)
    time.sleep(0.05)


@pytest.mark.tiers("multigpu")
@pytest.mark.gpus(2)
@pytest.mark.parametrize("i", range(6))
def test_two_gpus(tier, i):
    assert len(set(tier.gpu_ids)) == 2
    time.sleep(0.1)


@pytest.mark.tiers("multigpu")
@pytest.mark.gpus(4)
@pytest.mark.parametrize("i", range(4))
def test_four_gpus(tier, i):
    time.sleep(0.1)
    assert i != 3, "a failing test must still release its lease"


@pytest.mark.tiers("multigpu")
@pytest.mark.gpus(8)
def test_whole_host(tier):
    assert len(tier.gpu_ids) == 8
"""


def _intervals(log: Path) -> list[tuple[float, float, str, list[str]]]:
    opened: dict[tuple[str, tuple[str, ...]], float] = {}
    closed = []
    for line in log.read_text().splitlines():
        entry = json.loads(line)
        key = (entry["holder"], tuple(entry["devices"]))
        if entry["event"] == "acquire":
            assert key not in opened, f"{key} acquired twice without release"
            opened[key] = entry["t"]
        else:
            closed.append((opened.pop(key), entry["t"], entry["holder"], entry["devices"]))
    assert not opened, f"leases never released: {sorted(opened)}"
    return closed


def test_xdist_workers_pack_fake_gpus_without_overlap(fake_host):
    (fake_host / "test_packing.py").write_text(PACKING_TESTS)
    # A lease that never comes fails the inner test in seconds, not at the default 1800 s.
    env = {**os.environ, devices.LEASE_TIMEOUT_ENV: "15"}
    run = run_pytest(fake_host, "-n", "3", "--tier", "gpu,multigpu", env=env, timeout=50)
    assert "1 failed, 22 passed" in run.stdout, run.stdout + run.stderr
    intervals = _intervals(fake_host / "leases.jsonl")
    assert len(intervals) == 23
    for i, (start, end, holder, held) in enumerate(intervals):
        for other_start, other_end, other, other_held in intervals[i + 1 :]:
            if start < other_end and other_start < end:
                assert not set(held) & set(other_held), (
                    f"{holder} and {other} shared {set(held) & set(other_held)}"
                )
    used = {device for *_, held in intervals for device in held}
    assert used == {f"fake{i}" for i in range(8)}
