"""The plugin's options, ini keys and markers, and the checked `Options` of one run.

Kept apart from the hooks so every part of the plugin (ranks, reporting, the
inventory) reads the run's choices without importing the plugin module back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest

from harness import devices, gpu_schedule, seeding, tiers, validation
from harness.ci import durations

ENABLE_INI = "harness"
QUARANTINE_INI = "harness_quarantine"
POOL_TORCH_INI = "pool_torch_tests"
DEFAULT_DIST_TIMEOUT_S = 120.0
DEFAULT_DURATIONS = ".test_durations"
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
    gpu_schedule: str  # gpu_schedule.NEED or XDIST
    schedule_durations: str  # the durations file the GPU test order reads
    pool_torch_tests: bool = False  # torch's MultiProcessTestCase tests run on the rank pools


OPTIONS_KEY = pytest.StashKey[Options]()


def add_options(parser: pytest.Parser) -> None:
    """The ini keys and command-line options, grouped under the harness in `pytest --help`."""
    parser.addini(
        ENABLE_INI, type="bool", default=False, help="enable the ac-harness test tiers for this project"
    )
    parser.addini(
        QUARANTINE_INI, default="", help="TOML file of quarantined tests (see harness/quarantine.py)"
    )
    parser.addini(
        POOL_TORCH_INI,
        type="bool",
        default=False,
        help="run torch's MultiProcessTestCase tests on the harness's warm rank pools (docs/harness.md)",
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
        "--pool-torch-tests",
        action="store_true",
        default=False,
        help=f"run torch's MultiProcessTestCase tests on the warm rank pools for this run ({POOL_TORCH_INI} "
        "in the ini file for every run)",
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
        "--gpu-schedule",
        default=gpu_schedule.NEED,
        metavar="|".join(gpu_schedule.SCHEDULES),
        help="under xdist with GPU tiers only: 'need' (default) starts the tests needing the most GPUs, "
        "then the longest, first, whatever --dist says; 'xdist' leaves the order to --dist",
    )
    group.addoption(
        "--schedule-durations",
        default=DEFAULT_DURATIONS,
        metavar="PATH",
        help=f"recorded durations (JSON, as --record-durations writes) that order GPU tests, relative "
        f"to the rootdir (default {DEFAULT_DURATIONS})",
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


def ini_bool(config: pytest.Config, key: str) -> bool:
    """A boolean ini key; a bad value is one line naming the key and the file."""
    try:
        return bool(config.getini(key))
    except pytest.UsageError as error:  # pytest's own line names neither the key nor the file
        raise pytest.UsageError(f"ini key {key} in {config.inipath}: {error}; use true or false") from None


def enabled(config: pytest.Config) -> bool:
    """The opt-in: the project's ini says so, or this run names tiers or asks for an inventory."""
    return (
        ini_bool(config, ENABLE_INI)
        or config.getoption("--tier") is not None
        or bool(config.getoption("--harness-inventory"))
    )


def parse_gpu_range(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    match = re.fullmatch(r"(\d+)-(\d+)", text.strip())
    if match is None or int(match.group(1)) > int(match.group(2)):
        raise pytest.UsageError(f"--gpu-range {text!r}: expected LO-HI with 0 <= LO <= HI, e.g. 3-4")
    return int(match.group(1)), int(match.group(2))


def parse(config: pytest.Config) -> Options:
    """The run's options, checked: a bad value is a usage error before any test runs."""
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
    try:
        devices.parse_seconds(str(timeout), f"--dist-timeout {timeout:g}")
    except ValueError as error:
        raise pytest.UsageError(str(error)) from None
    seed = config.getoption("--harness-seed")
    if not 0 <= seed <= seeding.MAX_SEED:
        raise pytest.UsageError(f"--harness-seed {seed}: must be an integer from 0 to {seeding.MAX_SEED}")
    for option in ("--record-durations", "--harness-inventory"):
        path = config.getoption(option)
        if path and (problem := validation.output_file_problem(path)) is not None:
            raise pytest.UsageError(f"{option} {path!r}: {problem}")
    schedule = config.getoption("--gpu-schedule")
    if schedule not in gpu_schedule.SCHEDULES:
        raise pytest.UsageError(f"--gpu-schedule {schedule!r}: choose from {list(gpu_schedule.SCHEDULES)}")
    schedule_durations = config.getoption("--schedule-durations")
    if schedule_durations != DEFAULT_DURATIONS:  # named on purpose: it must exist and parse now;
        try:  # the default is read only where a GPU run orders by it (gpu_schedule.NeedFirst)
            durations.load(config.rootpath / schedule_durations, must_exist=True)
        except ValueError as error:
            raise pytest.UsageError(f"--schedule-durations {schedule_durations!r}: {error}") from None
    return Options(
        selected,
        timeout,
        seed,
        parse_gpu_range(config.getoption("--gpu-range")),
        inventory,
        schedule,
        schedule_durations,
        config.getoption("--pool-torch-tests") or ini_bool(config, POOL_TORCH_INI),
    )
