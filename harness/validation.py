"""What an enabled run reads from outside its command line, checked once at start-up:
the environment variables, the folders it keeps in shared places, and the durations
file pytest-split is about to read. Each problem is one line naming the value, what
is allowed and where it came from; `pytest_configure` raises them together as a usage
error (exit 4), before any test starts. The options are checked in `options.parse`,
the markers at collection (`markers`), the quarantine list in `quarantine.load`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from harness import devices, safe_paths
from harness.ci import durations

# Read by the harness as the run starts or ends (HARNESS_PHYSICAL_GPUS and
# HARNESS_HOME_GPU are the harness's own hand-over to its child processes).
STEP_SUMMARY_ENV = "GITHUB_STEP_SUMMARY"


def output_file_problem(path: str) -> str | None:
    """Why the harness could not write a file at `path` (None when it can)."""
    target = Path(path).absolute()
    if target.is_dir():
        return f"{path} is a directory; a file path is needed"
    existing = next(folder for folder in target.parents if folder.exists())
    if not existing.is_dir():
        return f"{existing} is not a directory"
    return None


def _fake_gpus(_: str) -> None:
    devices.fake_gpu_count()


def _lease_timeout(_: str) -> None:
    devices.lease_timeout()


def _lease_dir(_: str) -> None:
    devices.lease_dir()


def _output_file(raw: str) -> None:
    if (problem := output_file_problem(raw)) is not None:
        raise ValueError(problem)


ENV_CHECKS: dict[str, Callable[[str], None]] = {
    devices.FAKE_GPUS_ENV: _fake_gpus,
    devices.LEASE_TIMEOUT_ENV: _lease_timeout,
    devices.LEASE_DIR_ENV: _lease_dir,
    devices.LEASE_LOG_ENV: _output_file,
    STEP_SUMMARY_ENV: _output_file,
}


def environment_problems() -> list[str]:
    """One line per environment variable the harness cannot use as set."""
    problems = []
    for name, check in ENV_CHECKS.items():
        raw = os.environ.get(name)
        if not raw:
            continue
        try:
            check(raw)
        except (ValueError, OSError) as error:
            text = str(error) if str(error).startswith(name) else f"{name}={raw!r}: {error}"
            problems.append(f"{text} (from the environment)")
    return problems


def folder_problems() -> list[str]:
    """The per-user folders in the temp dir, checked before a test writes there: the rank
    logs always, the GPU leases when this host shows GPUs (else no test leases any)."""
    problems = []
    checks = [
        ("rank-log folder", lambda: safe_paths.secure_dir(safe_paths.user_temp_dir(safe_paths.RANK_LOGS_DIR)))
    ]
    if not os.environ.get(devices.LEASE_DIR_ENV) and _gpus_visible():
        checks.append(("GPU lease folder", devices.lease_dir))
    for what, check in checks:
        try:
            check()
        except OSError as error:
            problems.append(f"{what} (in the temp dir, per user): {error}")
    return problems


def _gpus_visible() -> bool:
    try:
        return devices.gpu_count() > 0
    except ValueError:
        return False  # a bad HARNESS_FAKE_GPUS, reported on its own


def split_durations_problem(config: pytest.Config) -> str | None:
    """pytest-split reads `--durations-path` as it starts and fails with an INTERNALERROR on
    a corrupt file: check it first, as `durations.load` would."""
    if not (getattr(config.option, "splits", None) and getattr(config.option, "group", None)):
        return None
    path = Path(config.option.durations_path)
    try:
        durations.load(path)
    except ValueError as error:
        return f"--durations-path (pytest-split): {error}"
    return None


def check(config: pytest.Config) -> None:
    """Every start-up problem at once, as one usage error of one line each."""
    problems = environment_problems() + folder_problems()
    if (split := split_durations_problem(config)) is not None:
        problems.append(split)
    if problems:
        raise pytest.UsageError(*problems)
