"""pytest plugin (entry point `harness`): options, opt-in, tier hooks and the `tier` fixture.

Installed, the plugin only adds its options and ini keys. It acts for a project
that asks for it, with `harness = true` in its ini file (or `--tier` on the
command line): then tests that use the `tier` fixture or carry a `tiers` or
`world_size` marker run once per tier, world_size tests run in ranks, and the
run ends with the tier table. Every other test, and every other project, is
left as pytest would run it. Tier rules live in `tiers`; ranks in `ranks`.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

from harness import devices, quarantine, seeding, tiers

if TYPE_CHECKING:
    from harness.env import TierEnv

TIER_PARAM = "_harness_tier"
ENABLE_INI = "harness"
QUARANTINE_INI = "harness_quarantine"
DEFAULT_DIST_TIMEOUT_S = 120.0
MARKERS = {
    "tiers": "tiers(*names): run this test only in these tiers (cpu, gpu, multigpu)",
    "gpus": "gpus(count): devices a gpu/multigpu test leases (default 1 / world size)",
    "world_size": "world_size(n, cpu=None): run the body in n ranks (a list: each size) with the default "
    "process group initialised; cpu=<int or list> limits the sizes run in the cpu tier",
    "isolated": "isolated: run a world_size test in fresh ranks instead of a reused pool",
}


@dataclass(frozen=True)
class Options:
    """The plugin's command-line choices, checked once at start-up."""

    selected: list[str] | None  # --tier; None: every tier, unsupported ones skipped
    dist_timeout_s: float
    seed: int
    gpu_range: tuple[int, int] | None
    inventory: str | None


OPTIONS_KEY = pytest.StashKey[Options]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        ENABLE_INI, type="bool", default=False, help="enable the ac-harness test tiers for this project"
    )
    parser.addini(
        QUARANTINE_INI, default="", help="TOML file of quarantined tests (see harness/quarantine.py)"
    )
    group = parser.getgroup("harness", "ac-harness test tiers (active with `harness = true` in the ini file)")
    group.addoption(
        "--tier",
        default=None,
        help=f"comma list of tiers to run ({', '.join(tiers.TIERS)}); default: every tier this machine "
        "supports. Enables the harness for this run.",
    )
    group.addoption(
        "--dist-timeout",
        type=float,
        default=DEFAULT_DIST_TIMEOUT_S,
        metavar="SECONDS",
        help="fail a world_size test whose ranks have not all finished after SECONDS, with every rank's "
        f"Python stack (default {DEFAULT_DIST_TIMEOUT_S:g}); the process-group timeout is 0.8x this",
    )
    group.addoption(
        "--harness-seed",
        type=int,
        default=seeding.DEFAULT_SEED,
        metavar="INT",
        help=f"seed torch, random and numpy with INT before each tiered test (default {seeding.DEFAULT_SEED})",
    )
    group.addoption(
        "--gpu-range",
        default=None,
        metavar="LO-HI",
        help="run only GPU-tier tests that need between LO and HI GPUs (how CI sizes multi-GPU jobs)",
    )
    group.addoption(
        "--record-durations",
        default=None,
        metavar="PATH",
        help="write each executed test's duration (setup to teardown, seconds) to PATH as JSON",
    )
    group.addoption(
        "--harness-inventory",
        default=None,
        metavar="PATH",
        help="write every tiered test id with its tier and GPU need to PATH as JSON (for the CI matrix); "
        "enables the harness and checks no tier against this machine",
    )


def enabled(config: pytest.Config) -> bool:
    """The opt-in: the project's ini says so, or this run names tiers or asks for an inventory."""
    return bool(
        config.getini(ENABLE_INI)
        or config.getoption("--tier") is not None
        or config.getoption("--harness-inventory")
    )


def _parse_gpu_range(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    match = re.fullmatch(r"(\d+)-(\d+)", text.strip())
    if match is None or int(match.group(1)) > int(match.group(2)):
        raise pytest.UsageError(f"--gpu-range {text!r}: expected LO-HI with 0 <= LO <= HI, e.g. 3-4")
    return int(match.group(1)), int(match.group(2))


def _options(config: pytest.Config) -> Options:
    requested = config.getoption("--tier")
    inventory = config.getoption("--harness-inventory")
    selected = None
    if requested is not None:
        try:
            selected = tiers.parse_tier_list(requested)
        except ValueError as error:
            raise pytest.UsageError(f"--tier {requested!r}: {error}") from None
        problems = [reason for name in selected if (reason := tiers.unsupported_reason(name))]
        if problems and not inventory:
            raise pytest.UsageError(
                "requested tier cannot run on this machine: "
                + "; ".join(problems)
                + ". Refusing to report green."
            )
    timeout = config.getoption("--dist-timeout")
    if not timeout > 0:
        raise pytest.UsageError(f"--dist-timeout {timeout:g}: must be a number of seconds above 0")
    return Options(
        selected,
        timeout,
        config.getoption("--harness-seed"),
        _parse_gpu_range(config.getoption("--gpu-range")),
        inventory,
    )


def pytest_configure(config: pytest.Config) -> None:
    if not enabled(config):
        return
    options = _options(config)
    config.stash[OPTIONS_KEY] = options
    for line in MARKERS.values():
        config.addinivalue_line("markers", line)
    worker = getattr(config, "workerinput", None)
    if worker is None:
        devices.record_visible_gpus()
    else:
        devices.pin_worker(worker["workerid"])
        _share_cpu_threads(worker["workercount"])
    from harness import durations, reporting, summary

    listed = _quarantine(config)
    register = config.pluginmanager.register
    register(TierHooks(options), "harness-tiers")
    if not _xdist_controller(config):  # it runs no test: no ranks, and no torch import
        from harness.ranks import plugin as ranks_plugin

        register(ranks_plugin.RankHooks(config, options.dist_timeout_s), "harness-ranks")
    register(
        reporting.Reporting(listed, options.seed, options.dist_timeout_s, DEFAULT_DIST_TIMEOUT_S),
        "harness-reporting",
    )
    register(summary.TierSummary(config, options.selected, listed), "harness-summary")
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


def _xdist_controller(config: pytest.Config) -> bool:
    return not hasattr(config, "workerinput") and config.getoption("dist", "no") != "no"


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


def tier_name(item: pytest.Item) -> str | None:
    callspec = getattr(item, "callspec", None)
    return None if callspec is None else callspec.params.get(TIER_PARAM)


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
            from harness import inventory

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
        yield tiers.tier_env(name, leased)
