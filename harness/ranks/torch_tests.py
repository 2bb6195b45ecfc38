"""torch's MultiProcessTestCase family on the warm rank pools (opt-in: `pool_torch_tests`).

The pytest process plays torch's parent as torch's runner does: unittest runs
`setUp`, the test method and `tearDown` here, `world_size` comes from the
instance and the wait from the class's timeout. Only the two places where the
parent starts and joins processes change: `_spawn_processes` hands torch's own
`_start_processes` a process class that sends the rank's entry point (`_run`
and its arguments) to a pool instead of spawning, and `_join_processes` waits
on the pool, then gives torch's `_check_return_codes` the exit codes and piped
tracebacks the ranks reported. So skips by exit code, `SkipTest` in a rank,
errors from ranks and `skip_return_code_checks` mean what they mean in torch.

A `MultiProcContinuousTest` class keeps one set of ranks for all its tests, in
torch and here: its `_spawn_processes` takes a pool for the class's life
(`torch_continuous`).

A class the pools cannot host runs through torch's own spawn path, and the
run's summary counts it with the reason (`fallback_reason`).
"""

from __future__ import annotations

import contextlib
import inspect
import os
import sys
import time
import unittest
from collections.abc import Callable
from typing import Any

import pytest

from harness import tiers
from harness.options import Options
from harness.ranks import display
from harness.ranks.pool import PoolKey, PoolRegistry, RankPool, RunResult
from harness.ranks.results import FAILED
from harness.ranks.torch_call import TorchCall
from harness.ranks.torch_continuous import ClassRun
from harness.reporting import POOLED, TORCH_POOL

COMMON = "torch.testing._internal.common_distributed"
# Every rank of a torch test imports it (a second or more of CPU): the forkserver does, once.
PRELOAD = (COMMON,)
# torch's parent-side methods this runner replaces or relies on; a class overriding one runs unpooled.
_PARENT_METHODS = ("_spawn_processes", "_start_processes", "_join_processes", "_check_return_codes")
_CONTINUOUS_METHODS = ("_spawn_processes", "_worker_loop")


def torch_case(cls: object) -> bool:
    """Whether `cls` is one of torch's multi-process test classes (only looked up once torch's module is loaded)."""
    common = sys.modules.get(COMMON)
    bases = tuple(
        getattr(common, n) for n in ("MultiProcessTestCase", "MultiProcContinuousTest") if hasattr(common, n)
    )
    return isinstance(cls, type) and bool(bases) and issubclass(cls, bases)


def continuous_case(cls: type) -> bool:
    continuous = getattr(sys.modules[COMMON], "MultiProcContinuousTest", None)
    return continuous is not None and issubclass(cls, continuous)


def fallback_reason(cls: type) -> str | None:
    """Why this class's tests run through torch's own spawn path; None when the pools host them."""
    common = sys.modules[COMMON]
    if continuous_case(cls):
        base, relied_on = common.MultiProcContinuousTest, _CONTINUOUS_METHODS
    else:
        base, relied_on = common.MultiProcessTestCase, _PARENT_METHODS
    for name in relied_on:
        if inspect.getattr_static(cls, name, None) is not inspect.getattr_static(base, name, None):
            return f"the class overrides torch's {name}"
    if "torch.cuda" in sys.modules and sys.modules["torch"].cuda.is_initialized():
        return "CUDA is initialised in the pytest process"
    return None


def declared_world_size(cls: type) -> int | None:
    """The world size torch's runner would start the class with, as far as collection can tell:
    a class attribute, or the property evaluated on a bare instance (as torch does for
    continuous classes); None when it depends on more (the test then counts as
    `tiers.DEFAULT_WORLD_SIZE` ranks when jobs are sized)."""
    declared = inspect.getattr_static(cls, "world_size", None)
    try:
        value = declared.fget(object.__new__(cls)) if isinstance(declared, property) else cls.world_size
        size = int(value)
    except Exception:
        return None
    return size if size > 0 else None


def stash_tier(item: pytest.Item, options: Options) -> None:
    """A torch test's tiers are a multi-rank test's (its `tiers` marker, else every multi-rank
    tier); it runs in the first of them this run selected, and holds its world size in GPUs there."""
    names = tiers.tiers_for(item, multi_rank=True)
    selected = [name for name in options.selected or () if name in names]
    item.stash[tiers.STASHED_TIERS] = names
    item.stash[tiers.STASHED_TIER] = selected[0] if selected else names[0]
    size = declared_world_size(item.cls)
    if size is not None:
        item.stash[tiers.STASHED_WORLD_SIZE] = size


def pool_key(item: pytest.Item, world_size: int, lease: contextlib.ExitStack) -> PoolKey:
    """CPU ranks, or in a GPU tier `world_size` GPUs leased into `lease` (the tier's lease, as for
    a native test; the class is what leases them when collection could not tell its size)."""
    name = tiers.tier_name(item) or "cpu"
    ids: tuple[str, ...] = ()
    if tiers.TIERS[name].min_gpus:
        item.stash[tiers.STASHED_WORLD_SIZE] = world_size
        ids = tuple(lease.enter_context(tiers.lease(item, name)))
    return PoolKey(world_size, name, tiers.backend_for(name), ids, group=False)


class _PooledRank:
    """Stands in for the spawned process torch's `_start_processes` makes for one rank."""

    def __init__(
        self, pool: RankPool, target: Callable[..., None], name: str, args: tuple, kwargs: dict
    ) -> None:
        self.target, self.name, self.args, self.kwargs = target, name, args, kwargs
        self.pid = pool.pids[args[0]]
        self.exitcode: int | None = None

    def start(self) -> None:
        """The pool starts every rank at once, when torch has made them all."""

    def terminate(self) -> None:
        """The pool ends ranks; torch's tearDown terminates what it started."""

    kill = terminate

    def join(self, timeout: float | None = None) -> None:
        """Finished by the time torch's checks run."""

    def is_alive(self) -> bool:
        return False


class PooledCase:
    """One torch test on a pool: torch's setUp starts its ranks there, its test method joins them."""

    def __init__(self, item: pytest.Item, instance: Any, registry: PoolRegistry, options: Options) -> None:
        self.item, self.instance, self.registry, self.options = item, instance, registry, options
        self.ranks: list[_PooledRank] = []
        self.pool: RankPool | None = None
        self.key: PoolKey | None = None
        self.lease = contextlib.ExitStack()
        self.started = 0.0
        self.released = False

    def install(self) -> None:
        """Take over the two parent-side steps on this instance only."""
        self.instance._spawn_processes = self.spawn
        self.instance._fork_processes = self.fork
        self.instance._join_processes = self.join

    def _fall_back(self, reason: str) -> None:
        _mark(self.item, reason)
        for name in ("_spawn_processes", "_fork_processes", "_join_processes"):
            vars(self.instance).pop(name, None)

    def fork(self) -> None:
        self._fall_back("the class starts its ranks by fork")
        self.instance._fork_processes()

    def spawn(self) -> None:
        reason = fallback_reason(type(self.instance))
        if reason is not None:
            self._fall_back(reason)
            self.instance._spawn_processes()
            return
        world_size = int(self.instance.world_size)
        self.key = pool_key(self.item, world_size, self.lease)
        pool = self.pool = self.registry.get(self.key)
        try:
            pool.wait_ready()
            self.instance._start_processes(self._make_rank)
            first = self.ranks[0]
            call = TorchCall(
                nodeid=self.item.nodeid,
                module=type(self.instance).__module__,
                path=sys.modules[type(self.instance).__module__].__file__ or "",
                cls=type(self.instance).__qualname__,
                entry=first.target.__name__,
                args=tuple(first.args[1:-1]),
                kwargs=first.kwargs,
                sys_path=tuple(sys.path),
                environ=dict(os.environ),
                seed=self.options.seed,
            )
            pool.send(call)
        except BaseException:
            self._release(broken=True)
            raise
        self.started = time.time()
        _mark(self.item, POOLED)

    def _make_rank(self, target: Callable[..., None], name: str, args: tuple, kwargs: dict) -> _PooledRank:
        assert self.pool is not None
        rank = _PooledRank(self.pool, target, name, args, kwargs)
        self.ranks.append(rank)
        return rank

    def join(self, fn: Callable[[], None]) -> None:
        """Wait for the ranks, show their output, and let torch's own checks decide the outcome."""
        __tracebackhide__ = True
        assert self.pool is not None
        common = sys.modules[COMMON]
        streaming = self.item.config.getoption("capture") == "no"
        try:
            result = self.pool.finish(
                display.echo if streaming else None,
                timeout_s=float(common.get_timeout(self.instance.id())),
                timeout_source="torch's timeout for this test",
            )
        except BaseException:
            self._release(broken=True)
            raise
        self._release(broken=False)
        self._hand_over(result)
        display.show(self.item, result)
        try:
            self.instance._check_return_codes(fn, time.time() - self.started)
        except unittest.SkipTest:
            raise
        except BaseException as error:
            if result.verdict.outcome == FAILED:
                error.add_note(f"harness, every rank's view:\n{result.verdict.message}")
            raise
        finally:
            for pipe in self.instance.pid_to_pipe.values():
                pipe.close()

    def _hand_over(self, result: RunResult) -> None:
        """Each rank's exit code onto its stand-in, and what it piped onto torch's pipe to it."""
        for rank, report in zip(self.ranks, result.reports, strict=True):
            rank.exitcode = report.exit_code
            child_end = rank.args[-1]
            messages = report.piped or ([""] if report.exit_code == common_error_code() else [])
            for message in messages:
                child_end.send(message)
            child_end.close()

    def _release(self, broken: bool) -> None:
        self.released = True
        if self.pool is not None and self.key is not None:
            self.pool.broken = self.pool.broken or broken
            self.registry.release(self.key, self.pool)
        self.lease.close()

    def abandon(self) -> None:
        """setUp started ranks but the test method never joined them (setUp failed after, or a skip)."""
        if self.pool is not None and not self.released:
            self._release(broken=True)


def common_error_code() -> int:
    return sys.modules[COMMON].MultiProcessTestCase.TEST_ERROR_EXIT_CODE


def _mark(item: pytest.Item, how: str) -> None:
    item.user_properties[:] = [p for p in item.user_properties if p[0] != TORCH_POOL]
    item.user_properties.append((TORCH_POOL, how))


class TorchTestHooks:
    """Registered by the rank hooks when `pool_torch_tests` is on."""

    def __init__(self, registry: PoolRegistry, options: Options) -> None:
        self.registry = registry
        self.options = options
        self.cases: dict[str, PooledCase] = {}
        # Continuous classes seen: None when pooled (their `_spawn_processes` replaced), else why not.
        self.continuous: dict[type, str | None] = {}
        self.class_runs: dict[type, ClassRun] = {}
        self.current: pytest.Item | None = None

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        """Before the harness selects tiers: each torch test gets its tier and world size."""
        for item in items:
            cls = getattr(item, "cls", None)
            if isinstance(cls, type) and issubclass(cls, unittest.TestCase) and torch_case(cls):
                stash_tier(item, self.options)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        """Before the class fixture: torch's older classes start their ranks in setUpClass."""
        self.current = item
        cls = getattr(item, "cls", None)
        if cls is None or cls in self.continuous or not torch_case(cls) or not continuous_case(cls):
            return
        reason = self.continuous[cls] = fallback_reason(cls)
        if reason is None:
            cls._spawn_processes = classmethod(self._spawn_class)

    def _spawn_class(self, cls: type, world_size: int) -> None:
        """In place of torch's `MultiProcContinuousTest._spawn_processes`, for one class."""
        assert self.current is not None
        lease = contextlib.ExitStack()
        key = pool_key(self.current, int(world_size), lease)
        run = ClassRun(
            cls, int(world_size), self.registry, key, lease, self.current.nodeid, self.options.seed
        )
        run.install()
        self.class_runs[cls] = run

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_call(self, item: pytest.Item) -> None:
        instance = getattr(item, "instance", None)
        if not isinstance(instance, unittest.TestCase) or not torch_case(type(instance)):
            return
        if type(instance) in self.continuous:
            _mark(item, self.continuous[type(instance)] or POOLED)
            return
        reason = fallback_reason(type(instance))
        if reason is not None:
            _mark(item, reason)
            return
        case = PooledCase(item, instance, self.registry, self.options)
        case.install()
        self.cases[item.nodeid] = case

    def pytest_runtest_teardown(self, item: pytest.Item) -> None:
        case = self.cases.pop(item.nodeid, None)
        if case is not None:
            case.abandon()

    def pytest_unconfigure(self) -> None:
        """Classes get torch's own `_spawn_processes` back; a class cut short ends with the run."""
        for cls, reason in self.continuous.items():
            if reason is None:
                del cls._spawn_processes
        for run in self.class_runs.values():
            run.pool.broken = run.pool.broken or not run.ended
            run.end()
