"""pytest hooks for `@pytest.mark.world_size(N)` tests, registered by `harness.plugin` when enabled.

The marker parametrizes `world_size`; `pytest_pyfunc_call` ships the call to
a pool of N ranks and turns their reports into one outcome, as pytest would
report the same body run in-process: skips at the test's own line, xfail
with `raises=`, warnings and returned values, output per rank.
"""

from __future__ import annotations

import inspect
import pickle

import pytest

from harness import markers, tiers
from harness.options import OPTIONS_KEY
from harness.ranks import calls, display, torch_tests
from harness.ranks.pool import PoolKey, PoolRegistry
from harness.ranks.results import FAILED, SKIPPED, XFAILED, Verdict
from harness.tiers import tier_name

SKIP_LOCATION_KEY = pytest.StashKey[tuple[str, int]]()


# Live pools one host keeps at most, split between its xdist workers: idle ranks hold about
# 200 MB each, and 8 workers keeping 4 pools of up to 8 ranks filled a 24 GB host.
POOLS_PER_HOST = 4


def pools_per_process(workers: int) -> int:
    return max(1, POOLS_PER_HOST // max(1, workers))


class RankHooks:
    """Runs world_size tests in pooled ranks; one registry of pools per pytest process."""

    def __init__(self, config: pytest.Config, dist_timeout_s: float) -> None:
        self.config = config
        options = config.stash[OPTIONS_KEY]
        preload = torch_tests.PRELOAD if options.pool_torch_tests else ()
        workers = getattr(config, "workerinput", {}).get("workercount", 1)
        self.registry = PoolRegistry(
            timeout_s=dist_timeout_s, max_pools=pools_per_process(workers), preload=preload
        )
        if options.pool_torch_tests:
            config.pluginmanager.register(
                torch_tests.TorchTestHooks(self.registry, options), "harness-torch-tests"
            )

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        self.registry.close_all()

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        nodeid = metafunc.definition.nodeid
        marker = metafunc.definition.get_closest_marker("world_size")
        if marker is None:
            if metafunc.definition.get_closest_marker("isolated") is not None:
                raise markers.MarkerError(nodeid, "isolated", "needs world_size(n) on the same test")
            return
        if len(marker.args) != 1 or set(marker.kwargs) - {"cpu"}:
            raise markers.MarkerError(
                nodeid, "world_size", "takes one argument (an int or a list) and optionally cpu="
            )
        sizes = markers.world_sizes(marker.args[0], nodeid)
        if "cpu" in marker.kwargs:
            markers.world_sizes(marker.kwargs["cpu"], nodeid, "cpu=")
        if "world_size" not in metafunc.fixturenames:
            metafunc.fixturenames.append("world_size")
        metafunc.parametrize("world_size", sizes, ids=[f"ws{n}" for n in sizes])

    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        """Refuse items the marker cannot apply to; drop sizes a marker keeps out of the cpu tier."""
        kept, dropped, misplaced = [], [], []
        for item in items:
            marker = item.get_closest_marker("world_size")
            if marker is None:
                kept.append(item)
                continue
            if tiers.world_size_of(item) is None:
                misplaced.append(f"{item.nodeid} ({type(item).__name__})")
                continue
            cpu_sizes = marker.kwargs.get("cpu")
            if (
                tier_name(item) == "cpu"
                and cpu_sizes is not None
                and tiers.world_size_of(item) not in markers.world_sizes(cpu_sizes, item.nodeid)
            ):
                dropped.append(item)
                continue
            kept.append(item)
        if misplaced:
            raise pytest.UsageError(
                "@pytest.mark.world_size applies to test functions and methods only, not to unittest "
                "methods, doctests or other items; remove it from (or move it off the module of): "
                + ", ".join(misplaced)
            )
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            items[:] = kept

    @pytest.hookimpl(tryfirst=True)
    def pytest_pyfunc_call(self, pyfuncitem: pytest.Function) -> bool | None:
        if pyfuncitem.get_closest_marker("world_size") is None:
            return None
        __tracebackhide__ = True
        if inspect.iscoroutinefunction(pyfuncitem.obj) or inspect.isasyncgenfunction(pyfuncitem.obj):
            # pytest fails an async body it has no plugin for; one it has would run it here, not in N ranks.
            pytest.fail(
                f"{pyfuncitem.nodeid}: an async def test cannot run in ranks; make it a def that calls "
                "asyncio.run(...)",
                pytrace=False,
            )
        item, options = pyfuncitem, pyfuncitem.config.stash[OPTIONS_KEY]
        name = tier_name(item) or "cpu"
        call = calls.make_call(item, options.seed)
        # pytest-rerunfailures counts attempts: a rerun always gets fresh ranks.
        isolated = item.get_closest_marker("isolated") is not None or getattr(item, "execution_count", 1) > 1
        streaming = item.config.getoption("capture") == "no"
        with tiers.lease(item, name) as ids:
            key = PoolKey(tiers.world_size_of(item), name, tiers.backend_for(name), ids)
            result = self.registry.run(key, call, isolated=isolated, echo=display.echo if streaming else None)
        display.show(item, result)
        _conclude(item, result.verdict)
        return True

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> pytest.TestReport:
        """A skip in the ranks is reported where the test raised it, not in this plugin."""
        report = yield
        location = item.stash.get(SKIP_LOCATION_KEY, None)
        if location is not None and report.skipped and isinstance(report.longrepr, tuple):
            report.longrepr = (location[0], location[1], report.longrepr[2])
        return report


def _conclude(item: pytest.Function, verdict: Verdict) -> None:
    __tracebackhide__ = True
    if verdict.outcome == SKIPPED:
        if verdict.lead is not None and verdict.lead.location is not None:
            item.stash[SKIP_LOCATION_KEY] = verdict.lead.location
        pytest.skip(verdict.message)
    if verdict.outcome == XFAILED:
        pytest.xfail(verdict.message)
    if verdict.outcome == FAILED:
        error = _lead_error(verdict) if item.get_closest_marker("xfail") is not None else None
        if error is not None:
            # pytest's xfail checks `raises=` against the exception itself.
            error.__notes__ = [*(getattr(error, "__notes__", None) or []), verdict.message]
            raise error
        pytest.fail(verdict.message, pytrace=False)


def _lead_error(verdict: Verdict) -> BaseException | None:
    if verdict.lead is None or verdict.lead.error is None:
        return None
    try:
        return pickle.loads(verdict.lead.error)
    except Exception:
        return None
