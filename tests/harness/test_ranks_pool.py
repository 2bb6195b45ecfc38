"""When a pool of ranks is kept for the next test and when it is replaced; rank output as it streams."""

from __future__ import annotations

import os
import signal

import pytest

from harness.ranks.logs import LiveEcho, RankLogs
from harness.ranks.pool import (
    PoolKey,
    PoolRegistry,
    PoolStartError,
    RankPool,
    rank_context,
    replacement_reasons,
    without_owner_watch,
)
from harness.ranks.results import PASSED, RUNNING, RankReport

# A self-test fails within 60 s when what it checks hangs, not at the suite-wide 600 s.
pytestmark = [pytest.mark.tiers("cpu"), pytest.mark.timeout(60)]

OWN_FAILURE = """
import os
import pytest
import torch.distributed as dist

PIDS = {pids!r}


def record(name):
    with open(os.path.join(PIDS, f"{{name}}-{{dist.get_rank()}}"), "w") as f:
        f.write(str(os.getpid()))


@pytest.mark.world_size(2)
def test_a_passes():
    record("a")


@pytest.mark.world_size(2)
def test_b_one_rank_fails_on_its_own():
    record("b")
    assert dist.is_initialized()
    if dist.get_rank() == 1:
        raise ValueError("own failure; the process group is fine")


@pytest.mark.world_size(2)
def test_c_runs_next():
    record("c")
"""


def test_a_failed_test_gets_its_ranks_replaced_even_with_the_process_group_alive(pytester, tmp_path):
    """No rank hung, none crashed, the group is intact, collectives match: the failure alone
    is reason enough, since the failing rank may have left anything behind."""
    pids = tmp_path / "pids"
    pids.mkdir()
    pytester.makepyfile(test_own=OWN_FAILURE.format(pids=str(pids)))
    result = pytester.runpytest("--tier", "cpu", "--dist-timeout", "10", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=1)

    def ranks(name: str) -> set[int]:
        return {int((pids / f"{name}-{rank}").read_text()) for rank in (0, 1)}

    assert ranks("a") == ranks("b"), "a passing test keeps its pool"
    assert not ranks("c") & ranks("b"), "the ranks of a failed test must not run the next one"


def test_replacement_reasons_name_what_a_fresh_rank_would_not_have():
    reports = [
        RankReport(0, PASSED, unclean=["CUDA_VISIBLE_DEVICES changed"], collectives=3),
        RankReport(1, PASSED, group_alive=False, collectives=4),
        RankReport(2, RUNNING, group_alive=False),
    ]
    assert replacement_reasons(reports) == [
        "rank 0: CUDA_VISIBLE_DEVICES changed",
        "the default process group was destroyed",
        "ranks left a collective unmatched: their process groups are at different sequence numbers "
        "{0: 3, 1: 4} (torch counts point-to-point sends there too)",
    ]
    clean = [
        RankReport(0, PASSED, collectives=2),
        RankReport(1, PASSED, collectives=2),
        RankReport(2, RUNNING),
    ]
    assert replacement_reasons(clean) == []


@pytest.fixture
def logs(tmp_path):
    """Two ranks' log files, without starting ranks."""
    paths = [str(tmp_path / "rank0.log"), str(tmp_path / "rank1.log")]
    for path in paths:
        open(path, "w").close()
    return RankLogs(paths)


def _append(path: str, text: str) -> None:
    with open(path, "a") as log:
        log.write(text)


def test_live_output_is_echoed_in_whole_lines_once_and_the_rest_at_the_end(logs):
    got: list[tuple[int, str]] = []
    live = LiveEcho(logs, lambda rank, text: got.append((rank, text)))
    _append(logs.paths[0], "one\ntwo\npar")
    live.poll()
    assert got == [(0, "one\ntwo\n")]
    _append(logs.paths[0], "tial\n")
    live.poll()
    assert got[1:] == [(0, "partial\n")]
    _append(logs.paths[0], "tail")
    _append(logs.paths[1], "ünï\n")
    live.poll(final=True)
    assert got[2:] == [(0, "tail"), (1, "ünï\n")]
    live.poll(final=True)
    assert got[4:] == [], "output is echoed once"


def test_a_long_log_keeps_its_end_and_says_how_much_was_cut(logs):
    _append(logs.paths[0], "abcdefgh")
    assert logs.read(0, 2, limit=4) == "... (2 bytes cut)\nefgh"
    assert logs.read(0, 2, limit=6) == "cdefgh"
    assert logs.read(0, 3) == "defgh"


def test_emptied_logs_hold_only_what_comes_after(logs):
    _append(logs.paths[0], "old test")
    logs.empty()
    _append(logs.paths[0], "new")
    assert (logs.read(0, 0), logs.size(0), logs.read(1, 0)) == ("new", 3, "")


def test_every_rank_stack_drops_the_owner_watch_thread():
    main, other = 'Current thread 1 (most recent call first):\n  File "t.py"', 'Thread 3:\n  File "u.py"'
    dump = f'{main}\n\nThread 2:\n  File "w.py", line 3 in _watch_owner\n\n{other}'
    assert without_owner_watch(dump) == f"{main}\n\n{other}"


class _Ranks:
    """Stands in for a RankPool in the registry's bookkeeping: started, run, closed."""

    def __init__(self, key: PoolKey, breaks: bool = False, raises: bool = False) -> None:
        self.key, self.breaks, self.raises = key, breaks, raises
        self.broken = self.closed = False
        self.runs = 0

    def alive(self) -> bool:
        return not self.broken

    def run(self, call, echo):
        self.runs += 1
        if self.raises:
            raise KeyboardInterrupt
        self.broken = self.breaks
        return f"result {self.runs}"

    def close(self) -> None:
        self.closed = self.broken = True


class _Registry(PoolRegistry):
    def __init__(self, **pools_break: bool) -> None:
        super().__init__(timeout_s=5, max_pools=2)
        self.started: list[_Ranks] = []
        self.pools_break = pools_break

    def _new(self, key: PoolKey) -> _Ranks:
        self.started.append(_Ranks(key, **self.pools_break))
        return self.started[-1]


def _key(size: int) -> PoolKey:
    return PoolKey(size, "cpu", "gloo")


def test_a_pool_is_reused_per_key_and_the_least_recently_used_closes_beyond_the_limit():
    registry = _Registry()
    one, two = registry.get(_key(1)), registry.get(_key(2))
    assert registry.get(_key(1)) is one  # now the most recently used
    three = registry.get(_key(3))
    assert (one.closed, two.closed, three.closed) == (False, True, False)
    assert list(registry.pools) == [_key(1), _key(3)]
    registry.close_all()
    assert one.closed and three.closed and not registry.pools


def test_a_dead_pool_is_closed_and_replaced_on_the_next_get():
    registry = _Registry()
    first = registry.get(_key(2))
    first.broken = True
    second = registry.get(_key(2))
    assert second is not first and first.closed and registry.pools[_key(2)] is second


def test_isolated_runs_get_fresh_ranks_closed_after_and_leave_the_pool_alone():
    registry = _Registry()
    pooled = registry.get(_key(2))
    assert registry.run(_key(2), call=None, isolated=True) == "result 1"
    (fresh,) = registry.started[1:]
    assert fresh.closed and not pooled.closed and pooled.runs == 0
    assert registry.pools[_key(2)] is pooled


def test_a_pool_a_run_broke_is_closed_and_forgotten():
    registry = _Registry(breaks=True)
    registry.run(_key(2), call=None)
    assert registry.started[0].closed and not registry.pools
    registry.run(_key(2), call=None)
    assert len(registry.started) == 2


def test_an_interrupted_run_closes_its_pool():
    registry = _Registry(raises=True)
    with pytest.raises(KeyboardInterrupt):
        registry.run(_key(2), call=None)
    assert registry.started[0].closed and not registry.pools


def _starting(key: PoolKey) -> RankPool:
    return RankPool(key, rank_context(), timeout_s=20, grace_s=2)


def test_a_rank_that_cannot_join_fails_the_start_naming_the_rank_and_torchs_error():
    pool = _starting(PoolKey(1, "cpu", "no-such-backend"))
    try:
        with pytest.raises(PoolStartError, match=r"^rank 0 failed to start:\n(.|\n)*no-such-backend"):
            pool.wait_ready()
    finally:
        pool.close()


def test_a_rank_that_dies_before_joining_fails_the_start_naming_its_signal():
    pool = _starting(PoolKey(2, "cpu", "gloo"))
    try:
        # Rank 0 cannot join without rank 1, so the start fails on rank 1's death, not a timeout.
        os.kill(pool.procs[1].pid, signal.SIGKILL)
        with pytest.raises(PoolStartError, match=r"^rank 1 killed by SIGKILL \(exit code -9\)"):
            pool.wait_ready()
    finally:
        pool.close()


def test_emptying_the_logs_between_tests_never_follows_a_planted_link(logs, tmp_path):
    """A swapped rank log linking to another file must not cut that file to 0 bytes."""
    victim = tmp_path / "victim"
    victim.write_text("precious")
    os.unlink(logs.paths[0])
    os.symlink(victim, logs.paths[0])
    _append(logs.paths[1], "last test's output")
    logs.empty()
    assert victim.read_text() == "precious"
    assert os.path.getsize(logs.paths[1]) == 0
