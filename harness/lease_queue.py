"""Fair turns for GPU leases, shared by every process on the host.

A lease that cannot be granted at once leaves a ticket in the lease directory.
Requests are served in ticket order: a ticket's rank is its arrival time minus
`HEAD_START_PER_GPU_S` per GPU it needs, so a burst of requests arriving
together goes largest first, and no request, in this session or another one,
is overtaken by one that arrived more than 8 x that later. Devices that free
up are held for the tickets ahead: a request behind a waiting k-GPU ticket may
take devices only while k others stay free for it. A waiting large lease is
thus never starved by a stream of small ones; its wait is bounded by the
tests running when it became next.

Tickets are files holding an `flock` while their process waits, so a ticket
whose process died is seen as stale and removed. Every grant happens under one
host-wide lock (`turn`), so the free set a request sees is not changing under it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness import safe_paths

# How much earlier than its arrival a request counts per GPU it needs.
HEAD_START_PER_GPU_S = 0.5
# Tickets lie in the lease directory itself, so they have its protection (`safe_paths`).
TICKET_PREFIX = "ticket-"
_settle_next_s = 0.0
_TURN_FILE = "queue.lock"


@dataclass(frozen=True)
class Ticket:
    rank: float  # lower is served first
    count: int
    home: str | None  # a one-GPU request that can use only this device
    name: str = ""


@contextlib.contextmanager
def turn(lock_dir: Path) -> Iterator[None]:
    """Hold the host-wide grant lock: one grant decision at a time."""
    fd = safe_paths.open_lock(lock_dir / _TURN_FILE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def settle_next_request(seconds: float) -> None:
    """Make this process's next request wait `seconds` with its ticket filed before it may
    be granted. A burst arriving together (xdist workers starting their first tests) is
    then served in ticket order, not in the order the OS happened to run the workers."""
    global _settle_next_s
    _settle_next_s = seconds


@contextlib.contextmanager
def waiting(lock_dir: Path, count: int, home: str | None) -> Iterator[Ticket]:
    """A ticket in the queue for as long as the block runs (the caller waits in it)."""
    rank = round(time.time() - count * HEAD_START_PER_GPU_S, 6)  # as read back from the name
    name = f"{TICKET_PREFIX}{rank:.6f}-{os.getpid()}-{threading.get_ident()}"
    ticket = Ticket(rank, count, home, name)
    with turn(lock_dir):  # created under the turn lock: no one sees it before it is locked
        fd = safe_paths.open_lock(lock_dir / name)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, json.dumps({"count": count, "home": home}).encode())
    try:
        global _settle_next_s
        settle, _settle_next_s = _settle_next_s, 0.0
        time.sleep(settle)
        yield ticket
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock_dir / name)
        os.close(fd)


def ahead_of(lock_dir: Path, mine: Ticket) -> list[Ticket]:
    """Live tickets served before `mine`, in order; stale ones (dead waiters) are removed."""
    ahead = []
    for path in lock_dir.glob(TICKET_PREFIX + "*"):
        if path.name == mine.name:
            continue
        try:
            rank = float(path.name.removeprefix(TICKET_PREFIX).split("-", 1)[0])
        except ValueError:
            continue
        if (rank, path.name) > (mine.rank, mine.name):
            continue
        ticket = _read_live(path, rank)
        if ticket is not None:
            ahead.append(ticket)
    return sorted(ahead, key=lambda t: (t.rank, t.name))


def _read_live(path: Path, rank: float) -> Ticket | None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        data = json.loads(os.read(fd, 4096) or b"{}")
        return Ticket(rank, int(data.get("count", 1)), data.get("home"), path.name)
    finally:
        os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # its waiter is gone
    return None


def grant(
    mine: Ticket, free: Sequence[str], choices: Sequence[str], ahead: Sequence[Ticket]
) -> list[str] | None:
    """The devices `mine` may take now, or None.

    `free` are the unheld devices, `choices` those `mine` can use in its order of
    preference. Each ticket ahead holds what it could use: its home device if
    it is bound to one, else as many free devices as it needs.
    """
    unclaimed = list(free)
    owed = 0
    for ticket in ahead:
        if ticket.home is not None:
            if ticket.home in unclaimed:
                unclaimed.remove(ticket.home)
        else:
            owed += ticket.count
    usable = [d for d in choices if d in unclaimed]
    if len(usable) < mine.count or len(unclaimed) - mine.count < owed:
        return None
    return usable[: mine.count]
