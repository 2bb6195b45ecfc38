"""One verdict from N rank reports.

Every rank that failed on its own leads the report, earliest first by the
time it failed; then the others: collectives broken by a failed peer
(knock-on) and the stacks of ranks still running. Whether an error is
knock-on is decided by where it was raised (inside torch.distributed) and
when, never by its text. A skip counts only if every rank skips.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field

PASSED, SKIPPED, XFAILED, FAILED = "passed", "skipped", "xfailed", "failed"
CRASHED, RUNNING = "crashed", "running"
_FAILURES = (FAILED, CRASHED)


@dataclass(frozen=True)
class RankWarning:
    """A warning a rank recorded, re-issued in the pytest process for its summary."""

    category: type[Warning]
    message: str
    filename: str
    lineno: int


@dataclass
class RankReport:
    """What one rank did with one test (sent by the rank, completed by the pool)."""

    rank: int
    outcome: str
    text: str = ""
    collective: bool = False  # the error was raised inside torch.distributed
    failed_at: float | None = None  # wall clock (time.time) of the failure
    group_alive: bool = True
    duration_s: float = 0.0
    output: str = ""
    stack: str = ""
    error: bytes | None = None  # the pickled exception, for xfail(raises=...)
    location: tuple[str, int] | None = None  # where a skip was raised
    returned: str | None = None  # type name of a non-None return value
    warnings: list[RankWarning] = field(default_factory=list)
    collectives: int | None = None  # the default group's sequence number after the test
    ended: list[str] = field(default_factory=list)  # processes the test left running, ended
    unclean: list[str] = field(default_factory=list)  # state the rank could not put back
    exit_code: int | None = None  # a torch test class's rank: how its process would have exited
    piped: list[str] = field(default_factory=list)  # ... and what it sent its parent (tracebacks)


@dataclass(frozen=True)
class Verdict:
    outcome: str
    message: str
    lead: RankReport | None = None  # the earliest own failure, when there is one


def exit_report(rank: int, exitcode: int | None, log_tail: str, when: float) -> RankReport:
    """A rank that died mid-test; a negative code is the signal that killed it."""
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        text = f"killed by {name} (exit code {exitcode})"
    elif exitcode:
        text = f"exited with code {exitcode}"
    else:
        text = "exited with code 0 before reporting a result"
    if log_tail.strip():
        text += f"\nlast output:\n{log_tail.rstrip()}"
    return RankReport(rank, CRASHED, text, group_alive=False, failed_at=when, exit_code=exitcode)


def _describe(report: RankReport, world_size: int) -> str:
    head = f"rank {report.rank} of {world_size}"
    if report.outcome == FAILED:
        body = f"{head} failed ({report.duration_s:.2f}s):\n{report.text.rstrip()}"
    elif report.outcome == CRASHED:
        body = f"{head} {report.text}"
    elif report.outcome == RUNNING:
        body = f"{head} was still running"
    else:
        body = f"{head} {report.outcome} ({report.duration_s:.2f}s)"
    if report.stack.strip():
        body += f"\nits Python stack:\n{report.stack.rstrip()}"
    return body


def _when(report: RankReport) -> float:
    return report.failed_at if report.failed_at is not None else float("inf")


def split_failures(reports: list[RankReport]) -> tuple[list[RankReport], list[RankReport]]:
    """(own failures earliest first, knock-on failures).

    A failure is the rank's own unless it broke inside a collective; if every
    failure did, the earliest is taken as the cause, unless a rank is still
    running (a hung rank is what times its peers' collectives out).
    """
    failures = sorted((r for r in reports if r.outcome in _FAILURES), key=_when)
    own = [r for r in failures if not r.collective]  # only a failed body sets `collective`
    if not own and failures and not any(r.outcome == RUNNING for r in reports):
        own = failures[:1]
    return own, [r for r in failures if r not in own]


def verdict(
    reports: list[RankReport],
    world_size: int,
    timeout_s: float | None = None,
    timeout_source: str = "--dist-timeout",
) -> Verdict:
    """Combine the reports; `timeout_s` is set when the wait ran out, `timeout_source` says whose limit it was."""
    own, knock_on = split_failures(reports)
    running = [r for r in reports if r.outcome == RUNNING]
    lead = own or running
    if lead:
        rest = knock_on + ([] if lead is running else running)
        message = "\n\n".join(_describe(r, world_size) for r in lead)
        if lead is running:
            waited = (
                f"after {timeout_s:g}s ({timeout_source})" if timeout_s is not None else "after a rank failed"
            )
            message = f"ranks {[r.rank for r in running]} still running {waited}:\n\n{message}"
        finished = [r for r in reports if r not in lead and r not in rest]
        if rest or finished:
            message += "\n\n---- other ranks (knock-on) ----\n\n"
            message += "\n\n".join(_describe(r, world_size) for r in rest + finished)
        return Verdict(FAILED, message, own[0] if own else None)
    outcomes = {r.outcome for r in reports}
    if outcomes == {PASSED}:
        return Verdict(PASSED, "")
    if outcomes == {SKIPPED} or outcomes == {XFAILED}:
        reasons = sorted({r.text for r in reports})
        return Verdict(outcomes.pop(), "; ".join(reasons), reports[0])
    by_outcome = {o: [r.rank for r in reports if r.outcome == o] for o in sorted(outcomes)}
    details = "; ".join(f"{o}: ranks {ranks}" for o, ranks in by_outcome.items())
    reasons = "; ".join(f"rank {r.rank}: {r.text}" for r in reports if r.text)
    return Verdict(
        FAILED,
        f"ranks disagree ({details}); a multi-rank test is skipped only when every rank skips. {reasons}",
    )
