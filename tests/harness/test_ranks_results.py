"""How N rank reports become one verdict: own errors first by time, skips only when unanimous."""

from __future__ import annotations

import signal

import pytest

from harness.ranks.results import CRASHED, FAILED, PASSED, RUNNING, SKIPPED, RankReport, exit_report, verdict

# A self-test fails within 10 s when what it checks hangs, not at the suite-wide 600 s.
pytestmark = [pytest.mark.tiers("cpu"), pytest.mark.timeout(10)]


def test_all_passed_passes():
    assert verdict([RankReport(0, PASSED), RankReport(1, PASSED)], 2).outcome == PASSED


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
