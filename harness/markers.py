"""The harness markers' arguments, checked at collection: a bad one is one line naming the
test, the marker and what it takes, and the run ends with pytest's usage-error exit (4).

A marker is read while its module is collected, so its error is a collection error; as
a `CollectError` it shows as its message alone, without a traceback, in a plain run and
from xdist workers alike. `UsageExit` then turns the run's exit code into 4.
"""

from __future__ import annotations

import os

import pytest

# The most ranks a world_size test may start (each is a process importing torch, about
# 200 MB): 16, or the host's core count when higher. A cpu-tier test may oversubscribe
# the cores up to this; a larger size is a mistake, not a fork storm.
MAX_RANKS = 16
# How every marker error starts, so the exit-code hook knows its own.
PREFIX = "harness marker error: "


class MarkerError(pytest.Collector.CollectError):
    """A harness marker with an argument it does not take."""

    def __init__(self, nodeid: str, marker: str, message: str) -> None:
        super().__init__(f"{PREFIX}{nodeid}: @pytest.mark.{marker}: {message}")


def max_ranks() -> int:
    return max(MAX_RANKS, os.cpu_count() or 1)


def _is_count(value: object, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= high


def gpu_count(marker: pytest.Mark, nodeid: str, high: int) -> int:
    """The one argument of `gpus(k)`: an int from 1 to `high` (what a host could ever give)."""
    if len(marker.args) != 1 or marker.kwargs:
        raise MarkerError(nodeid, "gpus", f"takes one int from 1 to {high}, got {_call(marker)}")
    count = marker.args[0]
    if not _is_count(count, high):
        raise MarkerError(nodeid, "gpus", f"takes one int from 1 to {high}, got {count!r}")
    return count


def tier_names(marker: pytest.Mark, nodeid: str, known: list[str]) -> tuple[str, ...]:
    """The arguments of `tiers(*names)`: one or more names, each a known tier."""
    names = marker.args
    if marker.kwargs or not names or not all(isinstance(n, str) and n in known for n in names):
        raise MarkerError(nodeid, "tiers", f"takes tier names, each one of {known}, got {_call(marker)}")
    return tuple(names)


def world_sizes(value: object, nodeid: str, argument: str = "world_size") -> list[int]:
    """An int or a non-empty list of ints, each from 1 to `max_ranks()`."""
    sizes = list(value) if isinstance(value, (list, tuple)) else [value]
    high = max_ranks()
    if not sizes or not all(_is_count(n, high) for n in sizes):
        raise MarkerError(
            nodeid, "world_size", f"{argument} takes an int from 1 to {high} or a list of them, got {value!r}"
        )
    return sizes


def _call(marker: pytest.Mark) -> str:
    args = [repr(a) for a in marker.args] + [f"{k}={v!r}" for k, v in marker.kwargs.items()]
    return f"{marker.name}({', '.join(args)})"


class UsageExit:
    """Ends a run whose collection hit a marker error with the usage-error exit code,
    in the xdist controller too (workers send it their collection reports)."""

    def __init__(self) -> None:
        self.seen = False

    @pytest.hookimpl(wrapper=True)
    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        """A usage error found across the items (a misspelled marker, say) ends a plain run at
        once; an xdist worker cannot do that (its controller reports an INTERNALERROR), so it
        reports the error as a failed collection and runs nothing."""
        try:
            return (yield)
        except pytest.UsageError as error:
            if not hasattr(config, "workerinput"):
                raise
            for line in error.args:
                report = pytest.CollectReport("", "failed", f"{PREFIX}{line}", [])
                config.hook.pytest_collectreport(report=report)
            items.clear()
            return None

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed and str(report.longrepr).startswith(PREFIX):
            self.seen = True

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.seen:
            session.exitstatus = pytest.ExitCode.USAGE_ERROR
