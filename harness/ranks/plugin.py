"""pytest hooks for `@pytest.mark.world_size(N)` tests (pytest11 entry point `harness_ranks`).

The marker parametrizes `world_size`; `pytest_pyfunc_call` ships the call to
a pool of N ranks and turns their reports into one outcome.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from harness import devices, tiers
from harness import plugin as tier_plugin
from harness.ranks import calls
from harness.ranks.pool import PoolKey, PoolRegistry
from harness.ranks.results import FAILED, SKIPPED, XFAILED

DEFAULT_DIST_TIMEOUT_S = 120.0
REGISTRY_KEY = pytest.StashKey[PoolRegistry]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("harness-ranks", "multi-rank (world_size) tests")
    group.addoption(
        "--dist-timeout",
        type=float,
        default=DEFAULT_DIST_TIMEOUT_S,
        metavar="SECONDS",
        help="fail a world_size test whose ranks have not all finished after SECONDS, with every rank's "
        f"Python stack (default {DEFAULT_DIST_TIMEOUT_S:g}); the process-group timeout is 0.8x this",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "world_size(n, cpu=None): run the body in n ranks (a list: each size) with the default process group "
        "initialised; cpu=<int or list> limits the sizes run in the cpu tier",
    )
    config.addinivalue_line(
        "markers", "isolated: run a world_size test in fresh ranks instead of a reused pool"
    )
    config.stash[REGISTRY_KEY] = PoolRegistry(timeout_s=config.getoption("--dist-timeout"))


def pytest_unconfigure(config: pytest.Config) -> None:
    registry = config.stash.get(REGISTRY_KEY, None)
    if registry is not None:
        registry.close_all()


def _sizes(value: object, where: str) -> list[int]:
    sizes = list(value) if isinstance(value, (list, tuple)) else [value]
    if not sizes or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in sizes):
        raise pytest.UsageError(f"{where}: world_size takes a positive int or a list of them, got {value!r}")
    return sizes


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("world_size")
    if marker is None:
        if metafunc.definition.get_closest_marker("isolated") is not None:
            raise pytest.UsageError(
                f"{metafunc.definition.nodeid}: @pytest.mark.isolated needs world_size(n)"
            )
        return
    if len(marker.args) != 1:
        raise pytest.UsageError(
            f"{metafunc.definition.nodeid}: world_size takes one argument (an int or a list)"
        )
    sizes = _sizes(marker.args[0], metafunc.definition.nodeid)
    if "world_size" not in metafunc.fixturenames:
        metafunc.fixturenames.append("world_size")
    metafunc.parametrize("world_size", sizes, ids=[f"ws{n}" for n in sizes])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Drop sizes a marker keeps out of the cpu tier; skip multigpu sizes beyond this host's GPUs."""
    kept, dropped = [], []
    for item in items:
        marker = item.get_closest_marker("world_size")
        if marker is None:
            kept.append(item)
            continue
        size, tier = item.callspec.params["world_size"], tier_plugin.tier_name(item)
        cpu_sizes = marker.kwargs.get("cpu")
        if tier == "cpu" and cpu_sizes is not None and size not in _sizes(cpu_sizes, item.nodeid):
            dropped.append(item)
            continue
        if tier is not None and tiers.TIERS[tier].min_gpus and size > devices.gpu_count() >= 2:
            item.add_marker(
                pytest.mark.skip(reason=f"world size {size} needs {size} GPUs; {devices.gpu_count()} here")
            )
        kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@contextlib.contextmanager
def _device_ids(item: pytest.Function, tier: str) -> Iterator[tuple[str, ...]]:
    """The leased devices: from the `tier` fixture when the test holds one, else a lease of our own."""
    if tiers.TIERS[tier].min_gpus == 0:
        yield ()
        return
    env = item.funcargs.get("tier")
    if env is not None and getattr(env, "gpu_ids", ()):
        yield tuple(env.gpu_ids)
        return
    with devices.lease(tier_plugin.gpus_needed(item, tier), holder=item.nodeid) as leased:
        yield tuple(leased)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    if pyfuncitem.get_closest_marker("world_size") is None:
        return None
    size = pyfuncitem.callspec.params["world_size"]
    tier = tier_plugin.tier_name(pyfuncitem) or "cpu"
    call = calls.make_call(pyfuncitem)
    registry = pyfuncitem.config.stash[REGISTRY_KEY]
    isolated = pyfuncitem.get_closest_marker("isolated") is not None
    with _device_ids(pyfuncitem, tier) as ids:
        key = PoolKey(size, tiers.backend_for(tier), ids)
        result = registry.run(key, call, isolated=isolated)
    for report in result.reports:
        if report.output.strip():
            pyfuncitem.add_report_section("call", f"rank {report.rank} output", report.output)
    outcome = result.verdict.outcome
    if outcome == SKIPPED:
        pytest.skip(result.verdict.message)
    if outcome == XFAILED:
        pytest.xfail(result.verdict.message)
    if outcome == FAILED:
        pytest.fail(result.verdict.message, pytrace=False)
    return True
