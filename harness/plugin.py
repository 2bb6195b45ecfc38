"""pytest plugin (entry point `harness`): opt-in, tier hooks and the `tier` fixture.

Installed, the plugin only adds its options and ini keys. It acts for a project
that asks for it, with `harness = true` in its ini file (or `--tier` on the
command line): then tests that use the `tier` fixture or carry a `tiers` or
`world_size` marker run once per tier, world_size tests run in ranks, and the
run ends with the tier table. Every other test, and every other project, is
left as pytest would run it. Options live in `options`, tier rules in `tiers`,
ranks in `ranks`.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from harness import (
    devices,
    gpu_hygiene,
    gpu_schedule,
    markers,
    options,
    quarantine,
    reporting,
    seeding,
    summary,
    tiers,
    validation,
)
from harness.ci import durations, inventory
from harness.options import DEFAULT_DIST_TIMEOUT_S, ENABLE_INI, MARKERS, OPTIONS_KEY, QUARANTINE_INI, Options
from harness.tiers import TIER_PARAM, tier_name

if TYPE_CHECKING:
    from harness.env import TierEnv


def pytest_addoption(parser: pytest.Parser) -> None:
    options.add_options(parser)


@pytest.hookimpl(tryfirst=True)  # before pytest-split reads the durations file it checks
def pytest_configure(config: pytest.Config) -> None:
    if not options.enabled(config):
        return
    validation.check(config)
    run_options = options.parse(config)
    config.stash[OPTIONS_KEY] = run_options
    for line in MARKERS.values():
        config.addinivalue_line("markers", line)
    worker = getattr(config, "workerinput", None)
    if worker is None:
        devices.record_visible_gpus()
        gpu_hygiene.record_run()
    else:
        devices.pin_worker(worker["workerid"])
        share_cpu_threads(worker["workercount"])
    listed = _quarantine(config)
    register = config.pluginmanager.register
    register(TierHooks(run_options), "harness-tiers")
    register(markers.UsageExit(), "harness-usage-exit")
    if not is_xdist_controller(config):
        # Imported here, not at the top: the ranks import torch (seconds), which an xdist
        # controller and a project that leaves the plugin off never need.
        from harness.ranks import plugin as ranks_plugin

        register(ranks_plugin.RankHooks(config, run_options.dist_timeout_s), "harness-ranks")
    register(
        reporting.Reporting(listed, run_options.seed, run_options.dist_timeout_s, DEFAULT_DIST_TIMEOUT_S),
        "harness-reporting",
    )
    register(summary.TierSummary(config, run_options.selected, listed), "harness-summary")
    if gpu_schedule.active(config, run_options.gpu_schedule, run_options.selected):
        register(
            gpu_schedule.NeedFirst(config.rootpath / run_options.schedule_durations), "harness-gpu-schedule"
        )
    if config.getoption("--record-durations") and worker is None:
        register(durations.Recorder(config.getoption("--record-durations")), "harness-durations")


def _quarantine(config: pytest.Config) -> quarantine.Quarantine:
    name = config.getini(QUARANTINE_INI)
    if not name:
        return quarantine.Quarantine((), quarantine.DEFAULT_READY_AFTER)
    base = config.inipath.parent if config.inipath is not None else config.rootpath
    try:
        return quarantine.load(base / name)
    except ValueError as error:
        raise pytest.UsageError(str(error)) from None


def is_xdist_controller(config: pytest.Config) -> bool:
    return not hasattr(config, "workerinput") and config.getoption("dist", "no") != "no"


def share_cpu_threads(workers: int) -> None:
    """Split the cores between xdist workers: oversubscribed torch threads spin
    against each other and made a loaded 2-core run over 100x slower. torch reads
    OMP_NUM_THREADS when it is first imported, which in a worker is after this."""
    threads = max(1, (os.cpu_count() or 1) // workers)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)
    else:
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))


def _registered_markers(config: pytest.Config) -> set[str]:
    return {re.split(r"[(:]", line, maxsplit=1)[0].strip() for line in config.getini("markers")}


class TierHooks:
    """Collection hooks of an enabled run: tier parameters, selection, marker checks."""

    def __init__(self, options: Options) -> None:
        self.options = options

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        node = metafunc.definition
        multi_rank = node.get_closest_marker("world_size") is not None
        if not (multi_rank or "tier" in metafunc.fixturenames or node.get_closest_marker("tiers")):
            return
        names = list(tiers.tiers_for(node, multi_rank))
        if (gpus := node.get_closest_marker("gpus")) is not None:
            markers.gpu_count(gpus, node.nodeid, tiers.max_gpus())
        if TIER_PARAM not in metafunc.fixturenames:
            metafunc.fixturenames.append(TIER_PARAM)
        metafunc.parametrize(TIER_PARAM, names, ids=names, indirect=True)

    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        _reject_misspelled_markers(config, items)
        selected, inventory = self.options.selected, self.options.inventory
        kept, dropped = [], []
        for item in items:
            name = tier_name(item)
            if name is None:
                kept.append(item)
                continue
            item.user_properties.append(("harness_tier", name))
            if (selected is not None and name not in selected) or not self._in_gpu_range(item, name):
                dropped.append(item)
                continue
            # An explicitly selected tier is runnable here (checked at start-up).
            reason = (
                None if inventory else tiers.unsupported_reason(name) or tiers.unrunnable_reason(item, name)
            )
            if reason is not None:
                item.add_marker(pytest.mark.skip(reason=f"not run here: {reason}"))
            kept.append(item)
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            items[:] = kept

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        if self.options.inventory:
            inventory.write(self.options.inventory, session.items)

    def _in_gpu_range(self, item: pytest.Item, name: str) -> bool:
        if self.options.gpu_range is None or not tiers.TIERS[name].min_gpus:
            return True
        low, high = self.options.gpu_range
        return low <= tiers.gpus_needed(item, name) <= high


def _reject_misspelled_markers(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A misspelled harness marker silently runs a multi-rank test in one process: make it an error."""
    known = _registered_markers(config)
    problems = set()
    for item in items:
        for mark in item.iter_markers():
            if mark.name not in known and (
                close := difflib.get_close_matches(mark.name, MARKERS, n=1, cutoff=0.8)
            ):
                problems.add(f"{item.nodeid}: unknown marker {mark.name!r}; did you mean {close[0]!r}?")
    if problems:
        raise pytest.UsageError("\n".join(sorted(problems)))


@pytest.fixture
def _harness_tier(request: pytest.FixtureRequest) -> str:
    if OPTIONS_KEY not in request.config.stash:
        pytest.fail(
            f"{request.node.nodeid} uses the ac-harness `tier` fixture, but the harness is not enabled "
            f"for this project: add `{ENABLE_INI} = true` to its pytest ini options (or pass --tier)",
            pytrace=False,
        )
    return request.param


@pytest.fixture
def tier(request: pytest.FixtureRequest, _harness_tier: str) -> Iterator[TierEnv]:
    """The test's tier environment: devices leased, seeded, deterministic where the tier says so."""
    name = _harness_tier
    with tiers.lease(request.node, name) as leased, tiers.determinism(name):
        seeding.seed_all(request.config.stash[OPTIONS_KEY].seed)
        env = tiers.tier_env(name, leased)
        in_process = env.is_cuda and request.node.get_closest_marker("world_size") is None
        with gpu_hygiene.memory_left_warning(env.device.index if in_process else None, request.node.nodeid):
            yield env
