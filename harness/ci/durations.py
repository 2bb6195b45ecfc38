"""Per-test durations: recorded by a run, merged into the file pytest-split shards on.

`--record-durations PATH` writes {test id: seconds, setup and teardown included}
for every test the run executed (under xdist, in the controller). `merge` lays
fresh records over an older file and drops ids no longer collected; `coverage`
says how much of a collection has a recorded duration.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from harness import safe_paths

# Above this share of collected tests without a duration, shards balance on guesses.
MAX_MISSING_SHARE = 0.10


class Recorder:
    """Each test's seconds, counted once its teardown is reported: a test cut off mid-way
    (Ctrl-C, -x) would otherwise be recorded with a false, partial duration."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.seconds: dict[str, float] = {}
        self.pending: dict[str, float] = {}
        self.note = ""

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.outcome == "rerun" or report.duration < 0:
            return
        self.pending[report.nodeid] = self.pending.get(report.nodeid, 0.0) + report.duration
        if report.when == "teardown":
            self.seconds[report.nodeid] = self.seconds.get(report.nodeid, 0.0) + self.pending.pop(
                report.nodeid
            )

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        """A run that ended normally replaces the record; a cut-short one is laid over it,
        since it saw only some tests (and never a partial file: writes are atomic)."""
        if exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED) and not session.shouldstop:
            save(self.path, self.seconds)
            return
        try:
            older = load(self.path)
        except ValueError as error:
            self.note = f"--record-durations: the run was cut short and {error}; {self.path} left as it was"
            return
        save(self.path, merge(older, [self.seconds]) if self.seconds else older)
        self.note = (
            f"--record-durations: the run was cut short; {len(self.seconds)} finished tests' durations "
            f"merged into {self.path}, whose other {len(set(older) - set(self.seconds))} entries are kept"
        )

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if self.note:
            terminalreporter.write_line(self.note, yellow=True)


def load(path: Path, must_exist: bool = False) -> dict[str, float]:
    """{test id: seconds}; a missing file is empty unless `must_exist`. Anything but a JSON
    object of test ids to finite, non-negative seconds is a ValueError naming the file."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        if must_exist:
            raise ValueError(f"durations file {path} does not exist") from None
        return {}
    except OSError as error:
        raise ValueError(f"durations file {path}: cannot read it: {error.strerror}") from None
    except ValueError as error:
        raise ValueError(f"durations file {path} is not JSON: {error}") from None
    if not isinstance(data, dict):
        raise ValueError(f"durations file {path}: expected an object of test id -> seconds")
    seconds = {}
    for nodeid, value in data.items():
        number = _seconds(value)
        if number is None:
            raise ValueError(
                f"durations file {path}: {nodeid!r} has {value!r}; expected finite, non-negative seconds"
            )
        seconds[nodeid] = number
    return seconds


def _seconds(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) and number >= 0 else None


def save(path: Path, seconds: dict[str, float]) -> None:
    """Written atomically: a reader (pytest-split, a merge) never sees half a file."""
    text = json.dumps({k: round(v, 3) for k, v in sorted(seconds.items())}, indent=1) + "\n"
    safe_paths.write_atomically(path, text)


def merge(
    base: dict[str, float], fresh: list[dict[str, float]], keep: set[str] | None = None
) -> dict[str, float]:
    """Fresh records win; with `keep`, ids outside it (tests that no longer exist) go.

    An empty fresh record or an empty `keep` is refused: either would silently shrink
    or empty the file CI shards on.
    """
    if any(not record for record in fresh):
        raise ValueError("a fresh record holds no durations; refusing to merge it")
    if keep is not None and not keep:
        raise ValueError("the inventory lists no test; refusing to drop every duration")
    merged = dict(base)
    for record in fresh:
        merged.update(record)
    return {k: v for k, v in merged.items() if keep is None or k in keep}


def coverage(collected: list[str], recorded: dict[str, float]) -> tuple[list[str], float]:
    """The collected ids without a duration and their share of the collection."""
    missing = [nodeid for nodeid in collected if nodeid not in recorded]
    return missing, (len(missing) / len(collected) if collected else 0.0)
