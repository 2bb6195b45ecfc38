"""Rank logs: one file per rank, written by the rank (fds 1 and 2), read by the pytest process.

The pool empties them before each test, so a log holds one test's output;
this module reads them for the report, for `-s` echo while a test runs, and
for the stack dumps ranks write on request. Where the folder lives and how
files are created or emptied is kept in the small functions below.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from harness import safe_paths

Echo = Callable[[int, str], None]


def logs_root() -> Path:
    """This user's rank-log folder, created 0700 and refused when another user could change it."""
    return safe_paths.secure_dir(safe_paths.user_temp_dir(safe_paths.RANK_LOGS_DIR))


def remove_stale_logs() -> None:
    """Log folders of pytest processes that were killed before they could remove their own."""
    with contextlib.suppress(OSError):
        for folder in logs_root().iterdir():
            owner = folder.name.partition("-")[0]
            if owner.isdigit() and not Path(f"/proc/{owner}").exists():
                shutil.rmtree(folder, ignore_errors=True)


def new_log_dir() -> str:
    """A folder for one pool's logs, named after this pytest process so a later run can tell it is stale."""
    return tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=logs_root())


def empty_log(path: str) -> None:
    """Through `safe_paths.truncate`: a link planted in a log's place is refused, not followed."""
    with contextlib.suppress(OSError):
        safe_paths.truncate(path)


class RankLogs:
    """The log files of one pool's ranks, by rank."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = paths

    def size(self, rank: int) -> int:
        try:
            return os.path.getsize(self.paths[rank])
        except OSError:
            return 0

    def read(self, rank: int, start: int, limit: int | None = None) -> str:
        """Rank output from byte `start`; beyond `limit` bytes the end is kept and the cut is said."""
        try:
            with open(self.paths[rank], "rb") as log:
                size = log.seek(0, os.SEEK_END)
                if limit is not None and size - start > limit:
                    log.seek(size - limit)
                    data = f"... ({size - start - limit} bytes cut)\n".encode() + log.read()
                else:
                    log.seek(start)
                    data = log.read()
        except OSError:
            return ""
        return data.decode(errors="replace")

    def empty(self) -> None:
        """Ranks append, so emptying the logs between tests caps them at one test's output."""
        for path in self.paths:
            empty_log(path)


class LiveEcho:
    """Hands rank output to `echo` while a test runs (pytest -s): whole lines as they come, the rest at the end."""

    def __init__(self, logs: RankLogs, echo: Echo) -> None:
        self.logs = logs
        self.echo = echo
        self.echoed = [0] * len(logs.paths)

    def poll(self, final: bool = False) -> None:
        for rank in range(len(self.logs.paths)):
            text = self.logs.read(rank, self.echoed[rank])
            if not final:
                text = text[: text.rfind("\n") + 1]
            if text:
                self.echoed[rank] += len(text.encode())
                self.echo(rank, text)
