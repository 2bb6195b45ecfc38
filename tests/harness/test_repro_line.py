"""The repro line of a failure, and the seed every tiered test starts from."""

from __future__ import annotations

import os
import random
import re

import pytest
import torch

from harness import devices, gpu_hygiene, repro, seeding, tiers

# A self-test fails within 60 s when what it checks hangs, not at the suite-wide 600 s.
pytestmark = [pytest.mark.tiers("cpu"), pytest.mark.timeout(60)]


# The variables a repro line carries (the fixture sets these and more).
CARRIED = {
    "TORCH_LOGS": "+dynamo",
    "NCCL_DEBUG": "INFO",
    "CUDA_LAUNCH_BLOCKING": "1",
    "OMP_NUM_THREADS": "2",
    "MKL_NUM_THREADS": "2",
    "PYTHONHASHSEED": "0",
}


@pytest.fixture
def environ(monkeypatch):
    """Only the variables a test sets here, of those a repro line may carry."""
    for name in list(os.environ):
        if name.startswith(repro.CARRIED_PREFIXES) or name in repro.CARRIED_NAMES:
            monkeypatch.delenv(name)
    for name, value in {
        **CARRIED,
        "CUBLAS_WORKSPACE_CONFIG": ":4096:8",  # the tier sets it
        devices.PHYSICAL_GPUS_ENV: "0,1,2,3",  # bookkeeping of the run
        devices.HOME_GPU_ENV: "1",
        devices.LEASE_DIR_ENV: "/tmp/x",
        devices.LEASE_LOG_ENV: "/tmp/y",
        gpu_hygiene.RUN_PID_ENV: "123",
        "TORCH_PIP_ARGS": "--index-url x",
        "UNRELATED": "not carried",
    }.items():
        monkeypatch.setenv(name, value)
    return monkeypatch


def test_the_environment_carries_what_shapes_a_test_and_the_devices_it_held(environ):
    assert repro.rerun_env(None, ()) == CARRIED
    assert repro.rerun_env("cpu", ("2", "3")) == CARRIED
    assert repro.rerun_env("multigpu", ("2", "3")) == {**CARRIED, "CUDA_VISIBLE_DEVICES": "2,3"}
    assert repro.rerun_env("gpu", ()) == CARRIED
    environ.setenv(devices.FAKE_GPUS_ENV, "4")  # fake devices are not CUDA's to select
    assert repro.rerun_env("gpu", ("fake1",)) == {**CARRIED, devices.FAKE_GPUS_ENV: "4"}


class _Item:
    def __init__(self, nodeid: str, leased: tuple[str, ...] = ()) -> None:
        self.nodeid = nodeid
        self.stash = pytest.Stash()
        if leased:
            self.stash[tiers.LAST_LEASE_KEY] = leased


def test_the_line_names_the_test_its_tier_seed_and_timeout_quoted_for_a_shell(environ):
    for name in CARRIED:
        environ.delenv(name)
    environ.setenv("TORCH_LOGS", "+dynamo,inductor graph")
    line = repro.line(_Item("t.py::test_x[a b-gpu]", ("2",)), "gpu", 3, 7.5, 120.0)
    assert line == (
        "CUDA_VISIBLE_DEVICES=2 TORCH_LOGS='+dynamo,inductor graph' "
        f"python -m pytest 't.py::test_x[a b-gpu]' --tier gpu --harness-seed 3 --dist-timeout 7.5  # {repro.versions()}"
    )
    environ.delenv("TORCH_LOGS")
    assert repro.line(_Item("t.py::test_y"), None, 0, 120.0, 120.0) == (
        f"python -m pytest t.py::test_y --harness-seed 0  # {repro.versions()}"
    )


def test_versions_name_torch_cuda_nccl_and_python():
    assert re.fullmatch(r"torch \S+, CUDA \S+, NCCL \S+, Python \d+\.\d+\.\d+", repro.versions())
    assert repro.versions().startswith(f"torch {torch.__version__}, CUDA {torch.version.cuda or 'none'}, ")


def test_one_seed_sets_torch_random_and_numpy():
    numpy = pytest.importorskip("numpy")
    seeding.seed_all(11)
    drawn = (torch.rand(2).tolist(), random.random(), numpy.random.rand())
    torch.manual_seed(11)
    random.seed(11)
    numpy.random.seed(11)
    assert drawn == (torch.rand(2).tolist(), random.random(), numpy.random.rand())
    seeding.seed_all(12)
    assert torch.rand(2).tolist() != drawn[0]
