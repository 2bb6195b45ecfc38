"""Per-test durations: recorded by a run, merged into the file pytest-split shards on.

`--record-durations PATH` writes {test id: seconds, setup and teardown included}
for every test the run executed (under xdist, in the controller). `merge` lays
fresh records over an older file and drops ids no longer collected; `coverage`
says how much of a collection has a recorded duration.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

# Above this share of collected tests without a duration, shards balance on guesses.
MAX_MISSING_SHARE = 0.10


class Recorder:
    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.seconds: dict[str, float] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.outcome != "rerun" and report.duration >= 0:
            self.seconds[report.nodeid] = self.seconds.get(report.nodeid, 0.0) + report.duration

    def pytest_sessionfinish(self) -> None:
        save(self.path, self.seconds)


def load(path: Path) -> dict[str, float]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except ValueError as error:
        raise ValueError(f"durations file {path} is not JSON: {error}") from None
    if not isinstance(data, dict):
        raise ValueError(f"durations file {path}: expected an object of test id -> seconds")
    return {str(k): float(v) for k, v in data.items()}


def save(path: Path, seconds: dict[str, float]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({k: round(v, 3) for k, v in sorted(seconds.items())}, indent=1) + "\n")


def merge(
    base: dict[str, float], fresh: list[dict[str, float]], keep: set[str] | None = None
) -> dict[str, float]:
    """Fresh records win; with `keep`, ids outside it (tests that no longer exist) go."""
    merged = dict(base)
    for record in fresh:
        merged.update(record)
    return {k: v for k, v in merged.items() if keep is None or k in keep}


def coverage(collected: list[str], recorded: dict[str, float]) -> tuple[list[str], float]:
    """The collected ids without a duration and their share of the collection."""
    missing = [nodeid for nodeid in collected if nodeid not in recorded]
    return missing, (len(missing) / len(collected) if collected else 0.0)
