"""The checked-in list of known-flaky tests that run without failing the job.

The ini key `harness_quarantine` names a TOML file:

    ready_after = 10          # passes in a row before an entry is reported as ready to remove

    [[test]]
    id = "tests/test_x.py::test_y[cpu]"   # a test id, or one without [...] for all its parameters
    reason = "stalls starting fresh ranks"
    link = "https://github.com/<owner>/<repo>/issues/123"

A quarantined test runs as `xfail(strict=False)`: a failure is reported, not counted.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest depends on tomli before 3.11
    import tomli as tomllib

DEFAULT_READY_AFTER = 10


@dataclass(frozen=True)
class QuarantinedTest:
    id: str
    reason: str
    link: str

    def matches(self, nodeid: str) -> bool:
        return nodeid == self.id or nodeid.startswith(self.id + "[")


@dataclass(frozen=True)
class Quarantine:
    entries: tuple[QuarantinedTest, ...]
    ready_after: int

    def find(self, nodeid: str) -> QuarantinedTest | None:
        return next((entry for entry in self.entries if entry.matches(nodeid)), None)


def load(path: Path) -> Quarantine:
    """Read the list; a malformed one is a ValueError naming the file and the entry."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ValueError(f"quarantine list {path}: {error}") from None
    ready_after = data.get("ready_after", DEFAULT_READY_AFTER)
    if isinstance(ready_after, bool) or not isinstance(ready_after, int) or ready_after < 1:
        raise ValueError(f"quarantine list {path}: ready_after={ready_after!r} must be a positive integer")
    tests = data.get("test", [])
    if not isinstance(tests, list) or not all(isinstance(raw, dict) for raw in tests):
        raise ValueError(f"quarantine list {path}: `test` must be [[test]] tables, got {tests!r}")
    entries = []
    for index, raw in enumerate(tests):
        missing = [
            key for key in ("id", "reason", "link") if not isinstance(raw.get(key), str) or not raw[key]
        ]
        if missing:
            raise ValueError(
                f"quarantine list {path}: [[test]] entry {index + 1} needs {missing} (non-empty strings)"
            )
        entries.append(QuarantinedTest(raw["id"], raw["reason"], raw["link"]))
    return Quarantine(tuple(entries), ready_after)
