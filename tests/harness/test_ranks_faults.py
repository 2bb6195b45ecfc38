"""world_size tests end to end: values reach the ranks, faults are reported, pools recover."""

from __future__ import annotations

import re

import pytest

# A self-test fails within 60 s when what it checks hangs, not at the suite-wide 600 s.
pytestmark = [pytest.mark.tiers("cpu"), pytest.mark.timeout(60)]

DIST_TIMEOUT = "3"

BODIES = """
import os, signal, time
import pytest
import torch
import torch.distributed as dist

PIDS = {pids!r}


def record(name):
    with open(os.path.join(PIDS, f"{{name}}-{{dist.get_rank()}}"), "w") as f:
        f.write(str(os.getpid()))


@pytest.fixture
def token(monkeypatch):
    monkeypatch.setenv("SELFTEST_FROM_FIXTURE", "yes")
    return {{"value": 41}}


@pytest.mark.world_size([1, 2])
@pytest.mark.parametrize("scale", [2, 3])
def test_values_reach_ranks(scale, token, world_size):
    assert dist.get_world_size() == world_size
    assert os.environ["RANK"] == os.environ["LOCAL_RANK"] == str(dist.get_rank())
    assert os.environ["WORLD_SIZE"] == str(world_size) and int(os.environ["MASTER_PORT"]) > 0
    assert os.environ["SELFTEST_FROM_FIXTURE"] == "yes"
    # Collectives time out (at 0.8x --dist-timeout) before the harness gives up on the ranks.
    group = dist.distributed_c10d._get_default_group()._get_backend(torch.device("cpu"))
    assert group.options._timeout.total_seconds() == pytest.approx(0.8 * {dist_timeout})
    total = torch.tensor([scale * token["value"]])
    dist.all_reduce(total)
    assert total.item() == scale * 41 * world_size


class TestInAClass:
    @pytest.mark.world_size(2)
    def test_method(self):
        record("warm_a")
        dist.barrier()


@pytest.mark.world_size(2)
def test_pool_is_reused():
    record("warm_b")
    dist.barrier()


@pytest.mark.world_size(2)
def test_one_rank_raises():
    if dist.get_rank() == 1:
        raise ValueError("boom from rank one")
    dist.barrier()


@pytest.mark.world_size(2)
def test_knock_on_follows_cause():
    if dist.get_rank() == 1:
        dist.destroy_process_group()
        raise ValueError("root cause in rank one")
    dist.barrier()


@pytest.mark.world_size(2)
def test_every_rank_fails_on_its_own():
    time.sleep(0.5 * (1 - dist.get_rank()))
    raise ValueError(f"own failure of rank {{dist.get_rank()}}")


@pytest.mark.world_size(2)
def test_own_error_that_says_timed_out():
    if dist.get_rank() == 1:
        raise RuntimeError("the operation timed out on its own")
    dist.barrier()


@pytest.mark.timeout(1)
@pytest.mark.world_size(2)
def test_pytest_timeout_shows_rank_stacks():
    time.sleep(600)


@pytest.mark.world_size(2)
def test_assert_is_explained():
    got = dist.get_rank() + 10
    assert got == 10


@pytest.mark.world_size(2)
def test_hang():
    if dist.get_rank() == 1:
        time.sleep(600)


@pytest.mark.world_size(2)
def test_rank_killed():
    if dist.get_rank() == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    dist.barrier()


@pytest.mark.world_size(2)
def test_rank_exits_nonzero():
    if dist.get_rank() == 0:
        os._exit(3)
    dist.barrier()


@pytest.mark.world_size(2)
def test_every_rank_skips():
    pytest.skip("skipped by every rank")


@pytest.mark.world_size(2)
def test_one_rank_skips():
    if dist.get_rank() == 0:
        pytest.skip("only rank zero")


@pytest.mark.world_size(2)
def test_pool_works_after_failures():
    record("after")
    total = torch.ones(1)
    dist.all_reduce(total)
    assert total.item() == 2


@pytest.mark.world_size(2)
@pytest.mark.isolated
def test_isolated_ranks_are_fresh():
    record("isolated")
    dist.barrier()
"""


def _section(output: str, name: str) -> str:
    """The failure report of one test in pytest's output."""
    header = rf"_{{5,}} {re.escape(name)}\[[^\]]*\] _{{5,}}\n"
    match = re.search(header + r"(.*?)(?=\n[_=-]{5,} \S.* [_=-]{5,}\n)", output, re.S)
    assert match, f"no failure section for {name}"
    return match.group(1)


def _pids(directory, name):
    return {int((directory / f"{name}-{rank}").read_text()) for rank in (0, 1)}


def test_faults_and_recovery(pytester, tmp_path):
    """One inner run over every fault: rank start-up is the cost, so the faults share it."""
    pids = tmp_path / "pids"
    pids.mkdir()
    pytester.makepyfile(test_bodies=BODIES.format(pids=str(pids), dist_timeout=DIST_TIMEOUT))
    result = pytester.runpytest("--tier", "cpu", "--dist-timeout", DIST_TIMEOUT, "-p", "no:cacheprovider")
    out = result.stdout.str()
    result.assert_outcomes(passed=8, failed=10, skipped=1)

    raised = _section(out, "test_one_rank_raises")
    assert raised.startswith("rank 1 of 2 failed") and "ValueError: boom from rank one" in raised
    # The failed rank is stopped, so its peer leaves the barrier as a knock-on failure at once.
    assert raised.index("knock-on") < raised.index("rank 0 of 2 failed") < raised.index("dist.barrier()")

    knock = _section(out, "test_knock_on_follows_cause")
    assert knock.startswith("rank 1 of 2 failed") and "root cause in rank one" in knock
    assert knock.index("root cause in rank one") < knock.index("knock-on") < knock.index("rank 0 of 2")

    both = _section(out, "test_every_rank_fails_on_its_own")
    assert both.startswith("rank 1 of 2 failed") and "knock-on" not in both
    assert (
        both.index("own failure of rank 1")
        < both.index("rank 0 of 2 failed")
        < both.index("own failure of rank 0")
    )

    timed_out = _section(out, "test_own_error_that_says_timed_out")
    assert timed_out.startswith("rank 1 of 2 failed")
    assert (
        timed_out.index("timed out on its own") < timed_out.index("knock-on") < timed_out.index("rank 0 of 2")
    )

    interrupted = _section(out, "test_pytest_timeout_shows_rank_stacks")
    assert "Timeout" in interrupted and "Python stacks of the ranks still running" in interrupted
    assert len(re.findall(r"line \d+ in test_pytest_timeout_shows_rank_stacks", interrupted)) == 2, (
        interrupted
    )
    assert re.search(r"still running:\nE +rank 0 of 2:\n(.|\n)*\nE +\nE +rank 1 of 2:\n", interrupted), (
        interrupted
    )

    explained = _section(out, "test_assert_is_explained")
    assert "assert 11 == 10" in explained

    hang = _section(out, "test_hang")
    assert f"after {DIST_TIMEOUT}s (--dist-timeout)" in hang
    # Only the rank still running is asked for its stack; the one that passed has none.
    assert len(re.findall(r"line \d+ in test_hang", hang)) == 1, hang
    assert re.search(r"rank 1 of 2 was still running\nits Python stack:", hang), hang
    assert re.search(r"^rank 0 of 2 passed \([0-9.]+s\)$", hang, re.M), hang
    assert hang.count("its Python stack") == 1, hang

    killed = _section(out, "test_rank_killed")
    assert killed.startswith("rank 1 of 2 killed by SIGKILL")

    exited = _section(out, "test_rank_exits_nonzero")
    assert exited.startswith("rank 0 of 2 exited with code 3")

    mixed = _section(out, "test_one_rank_skips")
    assert "every rank skips" in mixed

    warm = _pids(pids, "warm_a")
    assert warm == _pids(pids, "warm_b"), "two passing tests in a row should share one pool"
    after = _pids(pids, "after")
    assert not after & warm, "failed ranks should have been replaced"
    assert not _pids(pids, "isolated") & (after | warm), "an isolated test should get fresh ranks"
