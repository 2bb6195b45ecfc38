"""What pytest shows of a run in ranks, as it would show the body run in-process: output per
rank, warnings the ranks recorded, returned values, processes ended and pools replaced."""

from __future__ import annotations

import sys
import warnings

import pytest

from harness.ranks.pool import RunResult


class RankPoolReplaced(pytest.PytestWarning):
    """A test left its ranks in a state a fresh rank would not have; the next test got new ones."""


class RankProcessesEnded(pytest.PytestWarning):
    """A test left processes running in its ranks; they were ended with the test."""


def prefixed(rank: int, text: str) -> str:
    """Rank output as the report and `-s` show it: every line tagged with its rank."""
    return "".join(f"[rank {rank}] {line}" for line in text.splitlines(keepends=True))


def echo(rank: int, text: str) -> None:
    """Rank output while it runs (pytest -s), each line tagged with its rank."""
    sys.stdout.write(prefixed(rank, text))
    sys.stdout.flush()


def show(item: pytest.Function, result: RunResult) -> None:
    """What pytest would show for the body run in-process: output, warnings, returned values."""
    for report in result.reports:
        if report.output.strip():
            item.add_report_section("call", "stdout", prefixed(report.rank, report.output))
    seen = set()
    for report in result.reports:
        for warning in report.warnings:
            if (key := (warning.category, warning.message, warning.filename, warning.lineno)) not in seen:
                seen.add(key)
                warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    returned = sorted({(r.returned, r.rank) for r in result.reports if r.returned is not None})
    if returned:
        warnings.warn(
            pytest.PytestReturnNotNoneWarning(
                f"Test functions should return None, but {item.nodeid} returned a {returned[0][0]} "
                f"in ranks {[rank for _, rank in returned]}; did you mean to use `assert`?"
            ),
            stacklevel=1,
        )
    ended = [f"rank {r.rank} {what}" for r in result.reports for what in r.ended]
    if ended:
        warnings.warn(
            RankProcessesEnded(f"{item.nodeid} left processes running; ended: {'; '.join(ended)}"),
            stacklevel=1,
        )
    if result.replaced:
        warnings.warn(
            RankPoolReplaced(
                f"{item.nodeid}: ranks replaced for the next test: {'; '.join(result.replaced)}"
            ),
            stacklevel=1,
        )
