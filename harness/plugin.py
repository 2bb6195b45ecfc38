"""pytest plugin: run each test body once per tier.

Hooks stay thin; tier rules live in `tiers`, devices in `devices`, the table in
`summary`. Loaded through the `pytest11` entry point named `harness`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from harness import devices, summary, tiers

if TYPE_CHECKING:
    from harness.env import TierEnv

TIER_PARAM = "_harness_tier"
SELECTED_KEY = pytest.StashKey[list[str] | None]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("harness", "activation-checkpointing test tiers")
    group.addoption(
        "--tier",
        default=None,
        help=f"comma list of tiers to run ({', '.join(tiers.TIERS)}); default: every tier this machine supports",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "tiers(*names): run this test only in these tiers (cpu, gpu, multigpu)"
    )
    config.addinivalue_line(
        "markers", "gpus(count): devices a gpu/multigpu test leases (default 1 / world size)"
    )
    worker = getattr(config, "workerinput", None)
    if worker is None:
        devices.record_visible_gpus()
    else:
        devices.pin_worker(worker["workerid"])
        _share_cpu_threads(worker["workercount"])
    requested = config.getoption("--tier")
    selected = None
    if requested is not None:
        try:
            selected = tiers.parse_tier_list(requested)
        except ValueError as error:
            raise pytest.UsageError(f"--tier {requested!r}: {error}") from None
        problems = [reason for name in selected if (reason := tiers.unsupported_reason(name))]
        if problems:
            raise pytest.UsageError(
                "requested tier cannot run on this machine: "
                + "; ".join(problems)
                + ". Refusing to report green."
            )
    config.stash[SELECTED_KEY] = selected
    config.pluginmanager.register(summary.TierSummary(config, selected), "harness-summary")


def _share_cpu_threads(workers: int) -> None:
    """Split the cores between xdist workers: oversubscribed torch threads spin
    against each other and made a loaded 2-core run over 100x slower. torch reads
    OMP_NUM_THREADS when it is first imported, which in a worker is after this."""
    threads = max(1, (os.cpu_count() or 1) // workers)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)
    else:
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))


def tiers_of(definition: pytest.Function | pytest.Metafunc) -> tuple[str, ...]:
    node = definition.definition if isinstance(definition, pytest.Metafunc) else definition
    marker = node.get_closest_marker("tiers")
    if marker is not None:
        names = tuple(marker.args)
        try:
            tiers.parse_tier_list(",".join(names))
        except ValueError as error:
            raise pytest.UsageError(f"{node.nodeid}: @pytest.mark.tiers: {error}") from None
        return names
    if node.get_closest_marker("world_size") is not None:
        return tiers.MULTI_RANK_TIERS
    return tiers.DEFAULT_TIERS


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    names = list(tiers_of(metafunc))
    if TIER_PARAM not in metafunc.fixturenames:
        metafunc.fixturenames.append(TIER_PARAM)
    metafunc.parametrize(TIER_PARAM, names, ids=names, indirect=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    selected = config.stash[SELECTED_KEY]
    kept, dropped = [], []
    for item in items:
        name = tier_name(item)
        if name is None:
            kept.append(item)
            continue
        item.user_properties.append(("harness_tier", name))
        if selected is not None and name not in selected:
            dropped.append(item)
            continue
        reason = None if selected is not None else tiers.unsupported_reason(name)
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=f"not run here: {reason}"))
        kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def tier_name(item: pytest.Item) -> str | None:
    callspec = getattr(item, "callspec", None)
    return None if callspec is None else callspec.params.get(TIER_PARAM)


@pytest.fixture
def _harness_tier(request: pytest.FixtureRequest) -> str:
    return request.param


def gpus_needed(item: pytest.Item, tier: str) -> int:
    marker = item.get_closest_marker("gpus")
    if marker is not None:
        return int(marker.args[0])
    if tier == "multigpu":
        callspec = getattr(item, "callspec", None)
        size = callspec.params.get("world_size") if callspec else None
        if size is None:
            world = item.get_closest_marker("world_size")
            size = world.args[0] if world is not None and isinstance(world.args[0], int) else 2
        return int(size)
    return 1


@pytest.fixture
def tier(request: pytest.FixtureRequest, _harness_tier: str) -> Iterator[TierEnv]:
    """The test's tier environment; GPU tiers hold a device lease meanwhile."""
    from harness.env import TierEnv  # imports torch: only tests that use a tier pay for it

    name = _harness_tier
    device_type, backend = tiers.device_type_for(name), tiers.backend_for(name)
    if tiers.TIERS[name].min_gpus == 0:
        yield TierEnv(name, device_type, backend)
        return
    with devices.lease(gpus_needed(request.node, name), holder=request.node.nodeid) as leased:
        yield TierEnv(name, device_type, backend, tuple(leased))
