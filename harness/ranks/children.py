"""Processes a test starts in a rank end with the test.

The rank is a child subreaper, so whatever its test starts stays below it even
when an intermediate parent exits; after each test the rank kills what is
left. Each rank also leads its own process group, which the pool kills when it
closes, so a rank that crashed mid-test does not leave its children behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
from pathlib import Path

_PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _children(pid: int) -> list[int]:
    """Children of every thread of `pid`: a child's parent is the thread that started it."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found += [int(child) for child in task.read_text().split()]
        except OSError:
            continue  # the thread ended; its children moved to another thread of the process
    return found


def descendants(pid: int) -> list[int]:
    """Every live process below `pid`, following each child's own children."""
    found, todo = [], [pid]
    while todo:
        for child in _children(todo.pop()):
            if child not in found:
                found.append(child)
                todo.append(child)
    return found


def _describe(pid: int) -> str:
    try:
        command = (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        )
    except OSError:
        command = "?"
    return f"pid {pid}: {command}"


def end_descendants() -> list[str]:
    """SIGKILL every process below this one and reap it; returns what was ended."""
    left = descendants(os.getpid())
    if not left:
        return []
    ended = [_describe(pid) for pid in left]
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for pid in _children(os.getpid()):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)  # SIGKILL cannot be ignored: this returns at once
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass  # orphans of killed children, reparented here already; later ones are reaped next time
    return ended
