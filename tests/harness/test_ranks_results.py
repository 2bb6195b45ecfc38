"""How N rank reports become one verdict: own errors first by time, skips only when unanimous."""

from __future__ import annotations

import signal
import time

import pytest
import torch.distributed as dist

from harness.ranks.calls import execute
from harness.ranks.results import (
    CRASHED,
    FAILED,
    PASSED,
    RUNNING,
    SKIPPED,
    XFAILED,
    RankReport,
    Verdict,
    exit_report,
    verdict,
)
from tests.harness.rank_call import CALL

# A self-test fails within 10 s when what it checks hangs, not at the suite-wide 600 s.
pytestmark = [pytest.mark.tiers("cpu"), pytest.mark.timeout(10)]


def test_all_passed_passes():
    assert verdict([RankReport(0, PASSED), RankReport(1, PASSED)], 2) == Verdict(PASSED, "", None)


def test_own_error_leads_even_when_a_knock_on_failed_first():
    knock_on = RankReport(0, FAILED, "RuntimeError: gloo connection closed", collective=True, failed_at=1.0)
    cause = RankReport(1, FAILED, "ValueError: the cause", failed_at=2.0)
    result = verdict([knock_on, cause], 2)
    assert result.outcome == FAILED and result.lead is cause
    assert result.message.index("rank 1 of 2 failed") < result.message.index("knock-on")
    assert result.message.index("knock-on") < result.message.index("rank 0 of 2 failed")


def test_every_own_failure_leads_earliest_first_whatever_its_text():
    late = RankReport(0, FAILED, "RuntimeError: operation timed out", failed_at=5.0)
    early = RankReport(1, FAILED, "AssertionError: gloo", failed_at=3.0)
    peer = RankReport(2, FAILED, "DistBackendError: connection reset", collective=True, failed_at=4.0)
    message = verdict([late, early, peer], 3).message
    assert message.index("rank 1 of 3") < message.index("rank 0 of 3") < message.index("knock-on")
    assert message.index("knock-on") < message.index("rank 2 of 3")


def test_a_collective_error_is_the_cause_when_it_came_first():
    first = RankReport(1, FAILED, "DistBackendError: gloo says no", collective=True, failed_at=1.0)
    second = RankReport(0, FAILED, "DistBackendError: connection closed", collective=True, failed_at=2.0)
    result = verdict([second, first], 2)
    assert result.lead is first
    assert (
        result.message.index("rank 1 of 2")
        < result.message.index("knock-on")
        < result.message.index("rank 0")
    )


def test_hung_rank_leads_its_peers_timeouts():
    timeout = RankReport(1, FAILED, "RuntimeError: Timed out waiting", collective=True, failed_at=1.0)
    hung = RankReport(0, RUNNING, stack='File "t.py", line 3 in test_x')
    message = verdict([timeout, hung], 2).message
    assert message.startswith("ranks [0] still running")
    assert message.index("line 3 in test_x") < message.index("rank 1 of 2 failed")


def test_timeout_without_failures_names_the_limit_and_every_stack():
    reports = [RankReport(0, RUNNING, stack="stack zero"), RankReport(1, RUNNING, stack="stack one")]
    message = verdict(reports, 2, timeout_s=7).message
    assert "after 7s (--dist-timeout)" in message
    assert "stack zero" in message and "stack one" in message


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (-signal.SIGKILL, "killed by SIGKILL"),
        (-signal.SIGSEGV, "killed by SIGSEGV"),
        (3, "exited with code 3"),
    ],
)
def test_exit_codes_are_failures_named_by_signal(code, words):
    report = exit_report(1, code, "", 1.0)
    assert report.outcome == CRASHED and words in report.text
    assert verdict([RankReport(0, PASSED), report], 2).outcome == FAILED


def test_clean_exit_without_a_report_is_a_failure():
    report = exit_report(0, 0, "", 1.0)
    assert "before reporting" in report.text
    assert verdict([report, RankReport(1, PASSED)], 2).outcome == FAILED


def test_skip_counts_only_when_every_rank_skips():
    assert verdict([RankReport(0, SKIPPED, "why"), RankReport(1, SKIPPED, "why")], 2).outcome == SKIPPED
    mixed = verdict([RankReport(0, SKIPPED, "why"), RankReport(1, PASSED)], 2)
    assert mixed.outcome == FAILED and "every rank skips" in mixed.message


def test_the_whole_report_reads_cause_then_knock_on_then_hung_then_finished():
    reports = [
        RankReport(0, PASSED, duration_s=0.5),
        RankReport(1, FAILED, "ValueError: own\n", failed_at=2.0, duration_s=1.25),
        RankReport(2, FAILED, "DistBackendError: closed", collective=True, failed_at=1.0, duration_s=1.0),
        RankReport(3, RUNNING, stack="File t.py, line 9\n"),
    ]
    result = verdict(reports, 4)
    assert (result.outcome, result.lead) == (FAILED, reports[1])
    assert result.message == (
        "rank 1 of 4 failed (1.25s):\nValueError: own"
        "\n\n---- other ranks (knock-on) ----\n\n"
        "rank 2 of 4 failed (1.00s):\nDistBackendError: closed"
        "\n\nrank 3 of 4 was still running\nits Python stack:\nFile t.py, line 9"
        "\n\nrank 0 of 4 passed (0.50s)"
    )


def test_a_lone_failure_is_the_whole_message_and_one_without_a_time_counts_as_latest():
    alone = RankReport(0, FAILED, "ValueError: x\n", duration_s=0.004)
    assert verdict([alone], 1).message == "rank 0 of 1 failed (0.00s):\nValueError: x"
    timed = RankReport(1, FAILED, "ValueError: y", failed_at=9.0)
    assert verdict([alone, timed], 2).lead is timed


def test_own_failures_all_lead_earliest_first_one_paragraph_each():
    later = RankReport(0, FAILED, "ValueError: a", failed_at=2.0)
    first = RankReport(1, FAILED, "ValueError: b", failed_at=1.0)
    assert verdict([later, first], 2).message == (
        "rank 1 of 2 failed (0.00s):\nValueError: b\n\nrank 0 of 2 failed (0.00s):\nValueError: a"
    )


def test_a_hung_rank_outranks_knock_on_failures_when_no_rank_failed_on_its_own():
    knock_on = RankReport(0, FAILED, "DistBackendError: x", collective=True, failed_at=1.0)
    result = verdict([knock_on, RankReport(1, RUNNING, stack="s")], 2)
    assert result.lead is None
    assert result.message == (
        "ranks [1] still running after a rank failed:\n\nrank 1 of 2 was still running\nits Python stack:\ns"
        "\n\n---- other ranks (knock-on) ----\n\nrank 0 of 2 failed (0.00s):\nDistBackendError: x"
    )


def test_a_crash_is_never_knock_on():
    crash = exit_report(1, -signal.SIGKILL, "", 2.0)
    knock_on = RankReport(0, FAILED, "DistBackendError: x", collective=True, failed_at=1.0)
    assert verdict([knock_on, crash], 2).lead is crash


def test_an_unknown_signal_is_named_by_number_and_the_log_tail_follows():
    report = exit_report(2, -99, "a\nb\n  \n", 1.0)
    assert report.text == "killed by signal 99 (exit code -99)\nlast output:\na\nb"
    assert (report.rank, report.outcome, report.failed_at, report.group_alive) == (2, CRASHED, 1.0, False)
    assert exit_report(0, None, "  \n", 1.0).text == "exited with code 0 before reporting a result"


def test_unanimous_xfail_and_skip_keep_every_distinct_reason():
    xfailed = verdict(
        [RankReport(0, XFAILED, "b"), RankReport(1, XFAILED, "a"), RankReport(2, XFAILED, "b")], 3
    )
    assert (xfailed.outcome, xfailed.message, xfailed.lead.rank) == (XFAILED, "a; b", 0)
    skipped = verdict([RankReport(0, SKIPPED, "why"), RankReport(1, SKIPPED, "why")], 2)
    assert (skipped.outcome, skipped.message) == (SKIPPED, "why")


def test_ranks_that_disagree_are_listed_by_outcome_with_their_reasons():
    result = verdict(
        [RankReport(0, SKIPPED, "only here"), RankReport(1, PASSED), RankReport(2, XFAILED, "x")], 3
    )
    assert result.outcome == FAILED
    assert result.message == (
        "ranks disagree (passed: ranks [1]; skipped: ranks [0]; xfailed: ranks [2]); a multi-rank test is "
        "skipped only when every rank skips. rank 0: only here; rank 2: x"
    )


# --- which failures are a rank's own: decided where the error was raised, never by its text ---


def _raise(error: BaseException):
    def body():
        raise error

    return body


def _barrier_without_a_group():
    dist.barrier()  # raises inside torch.distributed: no default process group here


@pytest.mark.parametrize(
    ("body", "collective"),
    [
        (_raise(dist.DistBackendError("Connection closed by peer [127.0.0.1]:29500")), True),
        (_raise(dist.DistError("store timed out")), True),
        (_barrier_without_a_group, True),
        (_raise(RuntimeError("[gloo/transport/tcp/pair.cc:534] Connection closed by peer")), False),
        (_raise(ValueError("the rank's own bug")), False),
    ],
    ids=["DistBackendError", "DistError", "raised-in-torch.distributed", "gloo-text-own-raise", "own"],
)
def test_an_error_is_knock_on_only_when_torch_distributed_raised_it(body, collective):
    before = time.time()
    report = execute(CALL, body, {}, rank=1)
    assert (report.rank, report.outcome, report.collective) == (1, FAILED, collective)
    assert before <= report.failed_at <= time.time()


def test_an_own_error_caught_from_torch_distributed_and_reraised_is_own():
    def body():
        try:
            dist.barrier()
        except ValueError as error:
            raise AssertionError("the test's own check") from error

    assert not execute(CALL, body, {}, rank=0).collective


def test_passing_skipping_and_xfailing_bodies_report_as_pytest_would():
    passed = execute(CALL, lambda: 3, {}, rank=0)
    assert (passed.outcome, passed.returned, passed.failed_at, passed.text) == (PASSED, "int", None, "")

    def skips():
        pytest.skip("not here")

    skipped = execute(CALL, skips, {}, rank=0)
    assert (skipped.outcome, skipped.text, skipped.failed_at) == (SKIPPED, "not here", None)
    assert skipped.location == (__file__, skips.__code__.co_firstlineno + 1)
    xfailed = execute(CALL, lambda: pytest.xfail("known"), {}, rank=0)
    assert (xfailed.outcome, xfailed.text) == (XFAILED, "known")
