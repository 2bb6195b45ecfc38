"""One verdict from N rank reports.

The root cause leads the report: the first rank to fail with an error of its
own, then the others' knock-on errors (collectives broken by the failed rank)
and the stacks of ranks still running. A skip counts only if every rank skips.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass

PASSED, SKIPPED, XFAILED, FAILED = "passed", "skipped", "xfailed", "failed"
CRASHED, RUNNING = "crashed", "running"
_FAILURES = (FAILED, CRASHED)


@dataclass
class RankReport:
    """What one rank did with one test (sent by the rank, completed by the pool)."""

    rank: int
    outcome: str
    text: str = ""
    knock_on: bool = False
    group_alive: bool = True
    duration_s: float = 0.0
    output: str = ""
    stack: str = ""


@dataclass(frozen=True)
class Verdict:
    outcome: str
    message: str


def exit_report(rank: int, exitcode: int | None, log_tail: str) -> RankReport:
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
    return RankReport(rank, CRASHED, text, group_alive=False)


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


def verdict(reports: list[RankReport], world_size: int, timeout_s: float | None = None) -> Verdict:
    """Combine reports (in arrival order); `timeout_s` is set when the wait ran out.

    The lead is the first rank failing on its own (not from a broken collective);
    failing that, the ranks still running, since a hung rank is what makes its
    peers' collectives time out; failing that, the first knock-on error.
    """
    failures = [r for r in reports if r.outcome in _FAILURES]
    own = [r for r in failures if not r.knock_on]
    running = [r for r in reports if r.outcome == RUNNING]
    if own:
        lead = own[:1]
    elif running:
        lead = running
    else:
        lead = failures[:1]
    if lead:
        rest = [r for r in failures + running if r not in lead]
        message = "\n\n".join(_describe(r, world_size) for r in lead)
        if lead is running:
            waited = (
                f"after {timeout_s:g}s (--dist-timeout)" if timeout_s is not None else "after a rank failed"
            )
            message = f"ranks {[r.rank for r in running]} still running {waited}:\n\n{message}"
        finished = [r for r in reports if r not in failures and r not in running]
        if rest or finished:
            message += "\n\n---- other ranks (knock-on) ----\n\n"
            message += "\n\n".join(_describe(r, world_size) for r in rest + finished)
        return Verdict(FAILED, message)
    outcomes = {r.outcome for r in reports}
    if outcomes == {PASSED}:
        return Verdict(PASSED, "")
    if outcomes == {SKIPPED} or outcomes == {XFAILED}:
        reasons = sorted({r.text for r in reports})
        return Verdict(outcomes.pop(), "; ".join(reasons))
    by_outcome = {o: [r.rank for r in reports if r.outcome == o] for o in sorted(outcomes)}
    details = "; ".join(f"{o}: ranks {ranks}" for o, ranks in by_outcome.items())
    reasons = "; ".join(f"rank {r.rank}: {r.text}" for r in reports if r.text)
    return Verdict(
        FAILED,
        f"ranks disagree ({details}); a multi-rank test is skipped only when every rank skips. {reasons}",
    )
