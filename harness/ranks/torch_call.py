"""A test of torch's MultiProcessTestCase family in a pooled rank, as torch's spawned process runs it.

`MultiProcContinuousTest` keeps one set of ranks for a whole class: each runs the
class's `_worker_loop`, which takes test ids from a task queue and puts results on a
completion queue. A pooled rank runs that same loop as one call (`ContinuousCall`),
with both queues carried by the pool's own pipe to the pytest process.

torch's runner starts each rank with `cls._run(rank, test_name, file_name, pipe, **kwargs)`;
the rank ends with an exit code (0, a `TEST_SKIPS` code, or `TEST_ERROR_EXIT_CODE` after
sending its traceback down the pipe). Here the same entry point runs in a warm rank: its
`sys.exit` is caught, and the exit code travels back in the report with what the rank sent
down its pipe, so torch's own parent-side checks decide the outcome.

A fresh spawned rank imports the suite's modules anew; a pooled rank keeps them loaded, so
what a test assigns to their module globals or classes (a barrier counter, a registry) is
put back after it.
"""

from __future__ import annotations

import operator
import sys
import time
import traceback
from dataclasses import dataclass
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from typing import Any

from harness.ranks.calls import load_module
from harness.ranks.results import FAILED, PASSED, SKIPPED, RankReport

_SUITE_MODULES = ("torch.testing._internal.",)


@dataclass(frozen=True)
class TorchCall:
    """What torch's runner hands each spawned rank, for every rank of one test."""

    nodeid: str
    module: str
    path: str
    cls: str
    entry: str  # the classmethod torch's runner starts the rank with, `_run` unless a class changed it
    args: tuple[Any, ...]  # its arguments after the rank and before the pipe: (test name, file name)
    kwargs: dict[str, Any]
    sys_path: tuple[str, ...]
    environ: dict[str, str]
    seed: int


@dataclass(frozen=True)
class ContinuousCall:
    """What torch's `MultiProcContinuousTest._spawn_processes` hands each rank, for a whole class."""

    nodeid: str  # the class's
    module: str
    path: str
    cls: str
    world_size: int
    rdvz_file: str
    sys_path: tuple[str, ...]
    environ: dict[str, str]
    seed: int


# Messages on the pool's pipe while a continuous class runs: the parent sends TASK
# (a test id, or None at the end), the rank answers RESULT (the id, or an exception).
TASK = "task"
RESULT = "result"


class ParentQueue:
    """Both of torch's queues of one rank, as `_worker_loop` uses them: tasks come down the
    pool's pipe and results go up it."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def get(self, block: bool = True, timeout: float | None = None) -> object:
        message = self.conn.recv()
        # The pool is being closed ("exit"): end the loop as torch's None does.
        return message[1] if message[0] == TASK else None

    def put(self, value: object, block: bool = True, timeout: float | None = None) -> None:
        try:
            self.conn.send((RESULT, value))
        except Exception as error:  # a result that does not pickle: send what it said instead
            self.conn.send((RESULT, RuntimeError(f"{value!r} (and it could not be sent to pytest: {error})")))


def resolve(call: TorchCall | ContinuousCall) -> type:
    """The test class, its module loaded (and kept) as for a pytest test."""
    sys.path[:0] = [entry for entry in call.sys_path if entry not in sys.path]
    return operator.attrgetter(call.cls)(load_module(call.module, call.path))


class ModuleState:
    """Globals and class attributes of the modules a test class is built from, to put back after a test."""

    def __init__(self, cls: type) -> None:
        names = {c.__module__ for c in cls.__mro__} & set(sys.modules)
        modules = [sys.modules[n] for n in names if n == cls.__module__ or n.startswith(_SUITE_MODULES)]
        owners: list[Any] = list(modules)
        for module in modules:
            owners += [
                v for v in vars(module).values() if isinstance(v, type) and v.__module__ == module.__name__
            ]
        self.saved = [(owner, dict(vars(owner))) for owner in owners]

    def restore(self) -> None:
        for owner, saved in self.saved:
            now = vars(owner)
            for name in [n for n in now if n not in saved]:
                delattr(owner, name)
            for name, value in saved.items():
                if now.get(name, saved) is not value:
                    setattr(owner, name, value)


def _exit_code(code: object) -> int:
    """The exit status a process gets from `sys.exit(code)`."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _drain(conn: Connection) -> list[str]:
    sent = []
    try:
        while conn.poll():
            sent.append(str(conn.recv()))
    except (EOFError, OSError):
        pass
    return sent


def execute(call: TorchCall, cls: type, rank: int, skip_codes: set[int]) -> RankReport:
    """Run the class's rank entry point once in this process and report its exit as torch would see it."""
    start = time.perf_counter()
    ours, theirs = Pipe()
    state = ModuleState(cls)
    text = ""
    try:
        getattr(cls, call.entry)(rank, *call.args, theirs, **call.kwargs)
        code = 0
    except SystemExit as exit_:
        code = _exit_code(exit_.code)
    except KeyboardInterrupt:
        raise
    except BaseException:
        # An error escaping the entry point ends a spawned process with status 1, traceback on stderr.
        text = traceback.format_exc()
        print(text, file=sys.stderr, end="")
        code = 1
    finally:
        state.restore()
    piped = _drain(ours)
    ours.close()
    theirs.close()
    outcome = PASSED if code == 0 else SKIPPED if code in skip_codes else FAILED
    report = RankReport(rank, outcome, "\n".join(piped) or text or f"exited with code {code}", exit_code=code)
    report.piped = piped
    report.duration_s = time.perf_counter() - start
    if outcome == FAILED:
        report.failed_at = time.time()
    return report


def execute_continuous(call: ContinuousCall, cls: type, rank: int, conn: Connection) -> RankReport:
    """Serve a continuous class's tests until the parent sends None, as torch's spawned rank does."""
    start = time.perf_counter()
    queue = ParentQueue(conn)
    state = ModuleState(cls)
    try:
        cls._worker_loop(rank, call.world_size, call.rdvz_file, queue, queue)
        report = RankReport(rank, PASSED, exit_code=0)
    except KeyboardInterrupt:
        raise
    except BaseException:
        text = traceback.format_exc()
        print(text, file=sys.stderr, end="")
        report = RankReport(rank, FAILED, text, failed_at=time.time(), exit_code=1)
    finally:
        state.restore()
    report.duration_s = time.perf_counter() - start
    return report


def failure(rank: int) -> RankReport:
    """The rank could not load the test class: a spawned rank would exit with status 1."""
    text = traceback.format_exc()
    print(text, file=sys.stderr, end="")
    return RankReport(rank, FAILED, text, failed_at=time.time(), exit_code=1)


def skip_codes() -> set[int]:
    """torch's skip exit codes; its testing module is loaded by now (the test class imports it)."""
    from torch.testing._internal.common_distributed import TEST_SKIPS

    return {skip.exit_code for skip in TEST_SKIPS.values()}
