"""torch's MultiProcContinuousTest on a warm pool: one pool call serves a whole class.

torch keeps one set of ranks per class: `_spawn_processes` starts `world_size`
processes running the class's `_worker_loop`; each test's `setUp` puts its id on
every rank's task queue and its test method waits on every completion queue;
`tearDownClass` puts None and joins the processes. Only `_spawn_processes`
changes here: it takes a pool for the class's life and starts `_worker_loop` in
its ranks, with stand-ins for the processes and queues that talk over the pool's
pipes. setUp, the waits, the poison pill after a failure and tearDownClass stay
torch's own.

What torch's runner would learn late or not at all is reported with its cause:
a rank that dies answers at once with how it ended (not after torch's queue
timeout), and a test that outlives torch's timeout for it fails with every
rank's Python stack. Either leaves the pool broken: it is replaced when the
class ends.
"""

from __future__ import annotations

import contextlib
import os
import queue
import sys
import tempfile
import time
from multiprocessing.connection import wait
from typing import Any

from harness.ranks import display
from harness.ranks.pool import PoolKey, PoolRegistry, RankPool
from harness.ranks.torch_call import RESULT, TASK, ContinuousCall

COMMON = "torch.testing._internal.common_distributed"


class ClassRun:
    """One continuous class on one pool, from its first setUp to its tearDownClass."""

    def __init__(
        self,
        cls: type,
        world_size: int,
        registry: PoolRegistry,
        key: PoolKey,
        lease: contextlib.ExitStack,
        nodeid: str,
        seed: int,
    ) -> None:
        self.registry, self.key, self.lease = registry, key, lease
        self.cls, self.world_size = cls, world_size
        self.pool: RankPool = registry.take(key)
        self.current: str | None = None
        self.timeout_s = 0.0  # torch's timeout for the current test
        self.deadline = float("inf")
        self.log_starts = [0] * world_size
        self.ended = False
        with tempfile.NamedTemporaryFile(delete=False) as rendezvous:
            self.rdvz_file = rendezvous.name  # torch's tearDownClass removes it
        try:
            self.pool.wait_ready()
            self.pool.send(
                ContinuousCall(
                    nodeid=nodeid,
                    module=cls.__module__,
                    path=sys.modules[cls.__module__].__file__ or "",
                    cls=cls.__qualname__,
                    world_size=world_size,
                    rdvz_file=self.rdvz_file,
                    sys_path=tuple(sys.path),
                    environ=dict(os.environ),
                    seed=seed,
                )
            )
        except BaseException:
            self.pool.broken = True
            self.end()
            os.remove(self.rdvz_file)
            raise

    def install(self) -> None:
        """What torch's `_spawn_processes` leaves on the class for setUp, the waits and tearDownClass."""
        cls = self.cls
        cls.rdvz_file = self.rdvz_file
        cls.processes = [PooledProcess(self, rank) for rank in range(self.world_size)]
        cls.task_queues = [TaskQueue(self, rank) for rank in range(self.world_size)]
        cls.completion_queues = [CompletionQueue(self, rank) for rank in range(self.world_size)]

    def start_test(self, rank: int, test_id: str | None) -> None:
        if test_id is not None and test_id != self.current:
            self.current = test_id
            self.timeout_s = float(sys.modules[COMMON].get_timeout(test_id))
            self.deadline = time.monotonic() + self.timeout_s
        self.log_starts[rank] = self.pool.logs.size(rank)
        with contextlib.suppress(OSError):
            self.pool.conns[rank].send((TASK, test_id))

    def result(self, rank: int, timeout: float | None) -> object:
        """Rank `rank`'s answer for the current test; a death or overrun comes back as the error
        torch's wait then raises, and `queue.Empty` when only `timeout` ran out."""
        limit = self.deadline if timeout is None else min(self.deadline, time.monotonic() + timeout)
        conn = self.pool.conns[rank]
        while True:
            if conn.poll():
                try:
                    kind, value = conn.recv()
                except (EOFError, OSError):  # its end of the pipe closed: the rank is gone
                    return self._crashed(rank)
                if kind == RESULT:
                    self._show_output(rank)
                    return value
                if kind == "report":  # the rank left the class's loop (an error in `_init_pg`, say)
                    return self._failure(f"rank {rank} of {self.world_size} left the class:\n{value.text}")
                continue
            dead = [r for r, proc in enumerate(self.pool.procs) if not proc.is_alive()]
            if dead:
                return self._crashed(dead[0])
            left = limit - time.monotonic()
            if left <= 0:
                if limit < self.deadline:
                    raise queue.Empty
                return self._failure(
                    f"{self.current}: still running after {self.timeout_s:g}s (torch's timeout for this "
                    f"test); Python stacks of the ranks:\n{self.pool.running_stacks(list(range(self.world_size)))}"
                )
            try:
                wait([conn, *(proc.sentinel for proc in self.pool.procs)], left)
            except BaseException as interrupt:
                self._interrupted(interrupt)
                raise

    def _interrupted(self, interrupt: BaseException) -> None:
        """pytest-timeout or Ctrl-C ended the wait: the ranks are still in this test, so the rest
        of the class is skipped as after a failure (torch's poison pill) and the pool replaced."""
        self.cls.poison_pill = True
        self.pool.broken = True
        if not isinstance(interrupt, KeyboardInterrupt):
            stacks = self.pool.running_stacks(list(range(self.world_size)))
            interrupt.add_note(f"Python stacks of the ranks:\n{stacks}")

    def _crashed(self, rank: int) -> RuntimeError:
        text = f"rank {rank} of {self.world_size} {self.pool.crash_report(rank).text}"
        alive = [r for r, proc in enumerate(self.pool.procs) if proc.is_alive()]
        if alive:
            text += f"\nPython stacks of the ranks still running:\n{self.pool.running_stacks(alive)}"
        return self._failure(text)

    def _failure(self, text: str) -> RuntimeError:
        self.pool.broken = True
        return RuntimeError(text)

    def _show_output(self, rank: int) -> None:
        """What the rank printed during the test, into pytest's capture of it (a spawned rank's
        output lands there too)."""
        output = self.pool.logs.read(rank, self.log_starts[rank])
        if output:
            sys.stdout.write(display.prefixed(rank, output))

    def alive(self, rank: int) -> bool:
        return not self.ended and self.pool.procs[rank].is_alive()

    def end(self) -> None:
        """The class is over: wait for the ranks to leave the loop, put the pool back (or replace it)."""
        if self.ended:
            return
        self.ended = True
        try:
            if not self.pool.broken:
                result = self.pool.finish(timeout_s=self.pool.grace_s + 10.0)
                self.pool.broken = self.pool.broken or any(r.exit_code != 0 for r in result.reports)
        finally:
            self.registry.give_back(self.key, self.pool)
            self.lease.close()


class PooledProcess:
    """Stands in for one of the processes torch's `_spawn_processes` starts."""

    def __init__(self, run: ClassRun, rank: int) -> None:
        self.run, self.rank = run, rank
        self.pid = run.pool.pids[rank]
        self.name = f"process {rank}"

    def is_alive(self) -> bool:
        return self.run.alive(self.rank)

    @property
    def exitcode(self) -> int | None:
        return None if self.is_alive() else self.run.pool.procs[self.rank].exitcode

    def join(self, timeout: float | None = None) -> None:
        self.run.end()

    def terminate(self) -> None:
        self.run.pool.broken = True
        self.run.end()

    kill = terminate


class TaskQueue:
    """Rank `rank`'s task queue: a test id (or None, the end) sent down the pool's pipe."""

    def __init__(self, run: ClassRun, rank: int) -> None:
        self.run, self.rank = run, rank

    def put(self, test_id: str | None, block: bool = True, timeout: float | None = None) -> None:
        self.run.start_test(self.rank, test_id)


class CompletionQueue:
    """Rank `rank`'s completion queue: its answers come up the pool's pipe."""

    def __init__(self, run: ClassRun, rank: int) -> None:
        self.run, self.rank = run, rank

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        return self.run.result(self.rank, timeout if block else 0.0)

    def empty(self) -> bool:
        return not self.run.pool.conns[self.rank].poll()
