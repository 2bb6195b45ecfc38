"""Pools of rank processes, reused across tests and replaced after a failure.

A pool is keyed by world size, tier, backend and device set. Ranks are forked
from a forkserver that has torch imported (never from a process that touched
CUDA), so a fresh pool costs a fraction of a second after the first, and a
warm pool runs a test for the price of two pipe messages per rank. A pool is
also replaced when a test left it in a state a fresh rank would not have
(`RunResult.replaced` says why).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing import forkserver, resource_tracker
from multiprocessing.connection import Connection, wait
from multiprocessing.context import BaseContext

import torch.multiprocessing

from harness import tiers
from harness.ranks import logs, rendezvous, worker
from harness.ranks.calls import Call
from harness.ranks.logs import Echo, LiveEcho, RankLogs
from harness.ranks.results import CRASHED, FAILED, RUNNING, RankReport, Verdict, exit_report, verdict

PRELOAD = ["torch", "torch.distributed", "pytest", "harness.ranks.worker"]
_STACK_WAIT_S = 2.0
_LOG_TAIL_BYTES = 4000
# The most output of one rank in one test that a report carries (the end is kept).
OUTPUT_CAP_BYTES = 1 << 20
_ECHO_POLL_S = 0.05
# N ranks compiling at once already fill the host; torch.compile's worker pool would
# also leave processes running between tests.
_RANK_DEFAULTS = {"TORCHINDUCTOR_COMPILE_THREADS": "1"}


def without_owner_watch(dump: str) -> str:
    """Drop the owner-watch thread's block from a faulthandler dump: it is the same in every rank."""
    return "\n\n".join(block for block in dump.split("\n\n") if "in _watch_owner" not in block)


def replacement_reasons(reports: list[RankReport]) -> list[str]:
    """State a fresh rank would not have, which the ranks could not put back themselves."""
    reasons = [f"rank {r.rank}: {why}" for r in reports for why in r.unclean]
    if not all(r.group_alive for r in reports if r.outcome != RUNNING):
        reasons.append("the default process group was destroyed")
    counts = {r.rank: r.collectives for r in reports if r.collectives is not None}
    if len(set(counts.values())) > 1:
        reasons.append(
            "ranks left a collective unmatched: their process groups are at different sequence "
            f"numbers {counts} (torch counts point-to-point sends there too)"
        )
    return reasons


class PoolStartError(RuntimeError):
    """Ranks could not start or rendezvous."""


@dataclass(frozen=True)
class PoolKey:
    world_size: int
    tier: str
    backend: str
    device_ids: tuple[str, ...] = ()
    group: bool = True  # ranks join a default process group; torch's test classes make their own


@dataclass
class RunResult:
    verdict: Verdict
    reports: list[RankReport]
    replaced: list[str] = field(default_factory=list)  # why the ranks were not kept for the next test


def rank_context(extra_preload: tuple[str, ...] = ()) -> BaseContext:
    """torch.multiprocessing's forkserver context, preloading torch once for every rank."""
    context = torch.multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([*PRELOAD, *extra_preload])
    return context


def _forkserver_running() -> bool:
    return forkserver._forkserver._forkserver_pid is not None


def stop_forkserver() -> None:
    """End the forkserver and multiprocessing's resource tracker it started: both would
    otherwise outlive pytest until they notice it is gone."""
    forkserver._forkserver._stop()
    resource_tracker._resource_tracker._stop()


@contextlib.contextmanager
def _main_module_hidden() -> Iterator[None]:
    """Keep multiprocessing from re-running the caller's script in each rank.

    A script that calls `pytest.main()` without a `__main__` guard would run the
    whole session again inside every rank. Ranks need nothing from `__main__`.
    """
    main = sys.modules["__main__"]
    path = main.__dict__.pop("__file__", None) if getattr(main, "__spec__", None) is None else None
    try:
        yield
    finally:
        if path is not None:
            main.__file__ = path


class RankPool:
    """`world_size` live ranks, with an initialised default process group when `key.group`."""

    def __init__(self, key: PoolKey, context: BaseContext, timeout_s: float, grace_s: float) -> None:
        self.key = key
        self.timeout_s = timeout_s
        self.grace_s = grace_s
        self.broken = False
        self.ready = False
        self.logdir = logs.new_log_dir()
        group_timeout = max(1.0, 0.8 * timeout_s)
        cuda_ids = key.device_ids if key.backend == "nccl" else ()
        self.store = rendezvous.host_store(key.world_size, group_timeout) if key.group else None
        extra = {
            **{k: v for k, v in _RANK_DEFAULTS.items() if k not in os.environ},
            **tiers.startup_env(key.tier),
        }
        self.conns: list[Connection] = []
        self.procs = []
        paths = []
        with _main_module_hidden():
            for rank in range(key.world_size):
                log_path = os.path.join(self.logdir, f"rank{rank}.log")
                spec = worker.RankSpec(
                    rank=rank,
                    world_size=key.world_size,
                    backend=key.backend,
                    env={**self._own_env(rank, cuda_ids), **extra},
                    log_path=log_path,
                    owner_pid=os.getpid(),
                    group_timeout_s=group_timeout,
                    deterministic=tiers.TIERS[key.tier].deterministic,
                    init_group=key.group,
                )
                parent_end, child_end = context.Pipe()
                proc = context.Process(target=worker.main, args=(spec, child_end), name=f"harness-rank{rank}")
                proc.start()
                child_end.close()
                self.conns.append(parent_end)
                self.procs.append(proc)
                paths.append(log_path)
        self.logs = RankLogs(paths)

    def _own_env(self, rank: int, cuda_ids: tuple[str, ...]) -> dict[str, str]:
        """torchrun's variables for a pool with a group; a torch test class sets up its own rendezvous."""
        if self.store is not None:
            return rendezvous.rank_env(rank, self.key.world_size, self.store.port, cuda_ids)
        return {"CUDA_VISIBLE_DEVICES": ",".join(cuda_ids)} if cuda_ids else {}

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def alive(self) -> bool:
        return not self.broken and all(p.is_alive() for p in self.procs)

    def wait_ready(self) -> None:
        """Block until every rank has started (and joined the process group, when it has one)."""
        if self.ready:
            return
        deadline = time.monotonic() + self.timeout_s
        waiting = set(range(self.key.world_size))
        while waiting:
            left = deadline - time.monotonic()
            ready = wait([self.conns[r] for r in waiting] + [self.procs[r].sentinel for r in waiting], left)
            if not ready:
                raise PoolStartError(
                    f"ranks {sorted(waiting)} did not join the process group in {self.timeout_s:g}s"
                )
            for rank in list(waiting):
                message = self._receive(rank)
                if message is not None:
                    kind, detail = message
                    if kind != "ready":
                        raise PoolStartError(f"rank {rank} failed to start:\n{detail}")
                    waiting.discard(rank)
                elif not self.procs[rank].is_alive():
                    raise PoolStartError(f"rank {rank} {self.crash_report(rank).text}")
        self.ready = True

    def run(self, call: Call, echo: Echo | None = None) -> RunResult:
        """Run `call` in every rank: `send`, then `finish`."""
        self.send(call)
        return self.finish(echo)

    def send(self, call: Call) -> None:
        """Start `call` in every rank, on logs emptied for it."""
        self.wait_ready()  # a start error reaches the registry, which replaces the pool
        self.logs.empty()
        for conn in self.conns:
            conn.send(("run", call))

    def finish(
        self, echo: Echo | None = None, timeout_s: float | None = None, timeout_source: str = "--dist-timeout"
    ) -> RunResult:
        """Wait for the call `send` started, at most `timeout_s` (--dist-timeout by default).

        The first failure ends the wait after a short grace; a rank that failed is
        stopped at once, which ends the wait early on gloo. With `echo`, each rank's
        output is handed over line by line while it runs (pytest -s) instead of
        being collected for the report.
        """
        limit_s = self.timeout_s if timeout_s is None else timeout_s
        live = LiveEcho(self.logs, echo) if echo else None
        reports: dict[int, RankReport] = {}
        try:
            failed_at = self._wait_for_reports(reports, live, limit_s)
        except BaseException as interrupt:
            # pytest-timeout (or anything else) ended the wait: show where every rank was.
            self.broken = True
            if not isinstance(interrupt, KeyboardInterrupt):
                self._note_stacks(interrupt, reports)
            raise
        if live is not None:
            live.poll(final=True)
        return self._conclude(reports, failed_at, live is None, limit_s, timeout_source)

    def _wait_for_reports(
        self, reports: dict[int, RankReport], live: LiveEcho | None, limit_s: float
    ) -> float | None:
        """Fill `reports` until every rank reported, the wait ran out, or the grace after the
        first failure did; returns when that failure came (monotonic clock), if one did."""
        size = self.key.world_size
        deadline = time.monotonic() + limit_s
        failed_at: float | None = None
        while len(reports) < size:
            limit = deadline if failed_at is None else min(deadline, failed_at + self.grace_s)
            pending = [r for r in range(size) if r not in reports]
            left = max(0.0, limit - time.monotonic())
            ready = wait(
                [self.conns[r] for r in pending] + [self.procs[r].sentinel for r in pending],
                min(left, _ECHO_POLL_S) if live else left,
            )
            if live is not None:
                live.poll()
            if not ready and time.monotonic() >= limit:
                break
            for rank in pending:
                report = self._collect(rank)
                if report is None:
                    continue
                reports[rank] = report
                if report.outcome in (FAILED, CRASHED):
                    failed_at = failed_at or time.monotonic()
                    self._stop(rank)
        return failed_at

    def _note_stacks(self, interrupt: BaseException, reports: dict[int, RankReport]) -> None:
        """Add the Python stack of every rank still running to the exception that ended the wait."""
        stacks = self.running_stacks([r for r in range(self.key.world_size) if r not in reports])
        if stacks:
            notes = getattr(interrupt, "__notes__", None) or []
            interrupt.__notes__ = [*notes, f"Python stacks of the ranks still running:\n{stacks}"]

    def running_stacks(self, ranks: list[int]) -> str:
        """The Python stack of each of `ranks` still alive, one section per rank."""
        unfinished = {r: RankReport(r, RUNNING) for r in ranks}
        self._dump_stacks(unfinished)
        size = self.key.world_size
        return "\n\n".join(
            f"rank {r} of {size}:\n{rep.stack.rstrip()}" for r, rep in unfinished.items() if rep.stack.strip()
        )

    def _conclude(
        self,
        reports: dict[int, RankReport],
        failed_at: float | None,
        with_output: bool,
        limit_s: float,
        timeout_source: str,
    ) -> RunResult:
        """The verdict, with each rank's output and the stacks of ranks still running; the pool
        is marked broken when the next test must not get these ranks, and `replaced` says why."""
        size = self.key.world_size
        for rank in range(size):
            reports.setdefault(rank, RankReport(rank, RUNNING))
            if with_output:
                reports[rank].output = self.logs.read(rank, 0, OUTPUT_CAP_BYTES)
        ordered = [reports[r] for r in range(size)]
        hung = any(r.outcome == RUNNING for r in ordered)
        replaced = [] if hung or failed_at is not None else replacement_reasons(ordered)
        if hung or failed_at is not None or replaced:
            self.broken = True
        if hung:
            self._dump_stacks(reports)
        timeout = limit_s if hung and failed_at is None else None
        return RunResult(verdict(ordered, size, timeout, timeout_source), ordered, replaced)

    def _receive(self, rank: int) -> tuple | None:
        """The rank's next message; None while it has none, and once its end of the pipe closed."""
        with contextlib.suppress(EOFError, OSError):
            if self.conns[rank].poll():
                return self.conns[rank].recv()
        return None

    def crash_report(self, rank: int) -> RankReport:
        """How a rank that is no longer alive ended, with the end of its output."""
        proc = self.procs[rank]
        proc.join()
        return exit_report(rank, proc.exitcode, self.logs.read(rank, 0, _LOG_TAIL_BYTES), time.time())

    def _collect(self, rank: int) -> RankReport | None:
        """The rank's report; messages of a call that talks to its test while it runs (a
        continuous torch class's results the test no longer waited for) are dropped."""
        message = self._receive(rank)
        if message is not None and message[0] == "report":
            return message[1]
        if message is not None or self.procs[rank].is_alive():
            return None
        return self.crash_report(rank)

    def _stop(self, rank: int) -> None:
        """End a rank that failed: the pool is replaced after this test anyway, and peers
        blocked on it in a gloo collective then fail at once (knock-on) instead of at the grace."""
        with contextlib.suppress(ProcessLookupError):
            self.procs[rank].kill()

    def _dump_stacks(self, reports: dict[int, RankReport]) -> None:
        """Ask each unfinished rank for its Python stack (faulthandler answers even inside a blocked collective)."""
        live = [r for r, report in reports.items() if report.outcome == RUNNING and self.procs[r].is_alive()]
        before = {r: self.logs.size(r) for r in live}
        for rank in live:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.procs[rank].pid, worker.DUMP_SIGNAL)
        deadline = time.monotonic() + _STACK_WAIT_S
        sizes = dict(before)
        while time.monotonic() < deadline:
            time.sleep(0.1)
            now = {r: self.logs.size(r) for r in live}
            if all(now[r] > before[r] for r in live) and now == sizes:
                break
            sizes = now
        for rank in live:
            reports[rank].stack = without_owner_watch(self.logs.read(rank, before[rank]))

    def close(self) -> None:
        """Stop every rank (politely when idle) and kill each rank's process group, so
        nothing a test started survives, even below a rank that crashed."""
        if not self.broken:
            for conn in self.conns:
                with contextlib.suppress(OSError):
                    conn.send(("exit",))
            deadline = time.monotonic() + 1.0
            for proc in self.procs:
                proc.join(max(0.0, deadline - time.monotonic()))
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            if proc.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            proc.join(5.0)
        for conn in self.conns:
            conn.close()
        self.broken = True
        shutil.rmtree(self.logdir, ignore_errors=True)


class PoolRegistry:
    """The pools of one pytest process, least recently used closed first beyond `max_pools`."""

    def __init__(
        self, timeout_s: float, grace_s: float = 2.0, max_pools: int = 4, preload: tuple[str, ...] = ()
    ) -> None:
        self.timeout_s = timeout_s
        self.grace_s = grace_s
        self.max_pools = max_pools
        self.preload = preload  # modules every rank imports anyway, loaded once in the forkserver
        self.pools: OrderedDict[PoolKey, RankPool] = OrderedDict()
        self.taken: list[RankPool] = []  # out of `pools` while one caller holds them across tests
        self._context: BaseContext | None = None
        # Stopped at the end only by the registry it was started for (an in-process inner
        # pytest run, as pytester's, leaves the outer session's forkserver alone).
        self._owns_forkserver = not _forkserver_running()

    def _new(self, key: PoolKey) -> RankPool:
        if self._context is None:
            logs.remove_stale_logs()
            self._context = rank_context(self.preload)
        return RankPool(key, self._context, self.timeout_s, self.grace_s)

    def get(self, key: PoolKey) -> RankPool:
        pool = self.pools.pop(key, None)
        if pool is not None and not pool.alive():
            pool.close()
            pool = None
        if pool is None:
            while len(self.pools) >= self.max_pools:
                self.pools.popitem(last=False)[1].close()
            pool = self._new(key)
        self.pools[key] = pool
        return pool

    def take(self, key: PoolKey) -> RankPool:
        """A pool for `key` that no other test gets until `give_back`."""
        pool = self.get(key)
        del self.pools[key]
        self.taken.append(pool)
        return pool

    def give_back(self, key: PoolKey, pool: RankPool) -> None:
        """A taken pool: kept for the next test unless broken or another has taken its place."""
        if pool not in self.taken:  # closed with the others at the end of the run
            return
        self.taken.remove(pool)
        if pool.broken or key in self.pools or len(self.pools) >= self.max_pools:
            pool.close()
        else:
            self.pools[key] = pool

    def run(self, key: PoolKey, call: Call, isolated: bool = False, echo: Echo | None = None) -> RunResult:
        """Run in the pool for `key`, or in fresh ranks closed afterwards when `isolated`."""
        pool = self._new(key) if isolated else self.get(key)
        try:
            return pool.run(call, echo)
        except BaseException:
            pool.broken = True
            raise
        finally:
            self.release(key, pool, isolated)

    def release(self, key: PoolKey, pool: RankPool, isolated: bool = False) -> None:
        """After a run: close the pool when it was fresh for one test or must not be reused."""
        if isolated or pool.broken:
            pool.close()
        if pool.broken and self.pools.get(key) is pool:
            del self.pools[key]

    def close_all(self) -> None:
        while self.pools:
            self.pools.popitem()[1].close()
        while self.taken:
            self.taken.pop().close()
        if self._owns_forkserver and self._context is not None:
            stop_forkserver()
