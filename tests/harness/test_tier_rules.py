"""The tier rules as functions: GPU-count thresholds, which tiers a test gets, what it leases.

In-process and without pytester, so each rule is stated once with its exact values."""

from __future__ import annotations

import os
import sys

import pytest

from harness import devices, markers, tiers

# A self-test fails within 60 s when what it checks hangs, not at the suite-wide 600 s.
pytestmark = [pytest.mark.tiers("cpu"), pytest.mark.timeout(60)]


@pytest.fixture
def host(monkeypatch, tmp_path):
    """Set the GPUs this host shows: `host(n)` real-looking devices, `host(n, fake=True)` fake ones."""
    monkeypatch.setenv(devices.LEASE_DIR_ENV, str(tmp_path / "locks"))
    monkeypatch.delenv(devices.HOME_GPU_ENV, raising=False)

    def show(count: int, fake: bool = False) -> None:
        if fake:
            monkeypatch.delenv(devices.PHYSICAL_GPUS_ENV, raising=False)
            monkeypatch.setenv(devices.FAKE_GPUS_ENV, str(count))
        else:
            monkeypatch.delenv(devices.FAKE_GPUS_ENV, raising=False)
            monkeypatch.setenv(devices.PHYSICAL_GPUS_ENV, ",".join(str(i) for i in range(count)))

    return show


class _Item:
    """What the tier rules read of a pytest item: its markers, its parameters, its stash."""

    def __init__(self, *marks: pytest.MarkDecorator, world_size: int | None = None) -> None:
        self.nodeid = "test_x.py::test_x"
        self.marks = {mark.mark.name: mark.mark for mark in marks}
        self.stash = pytest.Stash()
        if world_size is not None:
            self.callspec = type("CallSpec", (), {"params": {"world_size": world_size}})()

    def get_closest_marker(self, name: str):
        return self.marks.get(name)


NO_GPU = "this machine has no CUDA device"


@pytest.mark.parametrize(
    ("gpus", "expected"),
    [
        (
            0,
            {
                "cpu": None,
                "gpu": f"tier 'gpu' needs at least 1 GPU(s); {NO_GPU}",
                "multigpu": f"tier 'multigpu' needs at least 2 GPU(s); {NO_GPU}",
            },
        ),
        (
            1,
            {
                "cpu": None,
                "gpu": None,
                "multigpu": "tier 'multigpu' needs at least 2 GPU(s); this machine has only 1 GPU(s)",
            },
        ),
        (2, {"cpu": None, "gpu": None, "multigpu": None}),
    ],
)
def test_each_tier_runs_from_its_gpu_count(host, gpus, expected):
    host(gpus)
    assert {name: tiers.unsupported_reason(name) for name in tiers.TIERS} == expected


@pytest.mark.parametrize(("gpus", "expected"), [(0, ["gpu"]), (1, ["gpu"]), (2, ["gpu", "multigpu"])])
def test_make_test_gpu_asks_for_what_the_host_runs_and_never_nothing(host, gpus, expected):
    host(gpus)
    assert tiers.gpu_test_tiers() == expected


def test_tier_minimums_are_0_1_2_gpus():
    assert {name: tier.min_gpus for name, tier in tiers.TIERS.items()} == {"cpu": 0, "gpu": 1, "multigpu": 2}


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        (_Item(), {"cpu": 0, "gpu": 1, "multigpu": tiers.DEFAULT_WORLD_SIZE}),
        (_Item(world_size=4), {"cpu": 0, "gpu": 1, "multigpu": 4}),
        (_Item(pytest.mark.gpus(3), world_size=4), {"cpu": 0, "gpu": 3, "multigpu": 3}),
    ],
    ids=["plain", "world-size-4", "gpus-marker-3"],
)
def test_gpus_needed_is_the_marker_else_one_per_rank_else_one(item, expected):
    assert {name: tiers.gpus_needed(item, name) for name in tiers.TIERS} == expected


@pytest.mark.parametrize(
    ("gpus", "expected"),
    [(0, None), (1, None), (2, "needs 4 GPUs; 2 here"), (3, "needs 4 GPUs; 3 here"), (4, None)],
)
def test_a_test_needing_more_gpus_than_a_runnable_tier_has_says_so(host, gpus, expected):
    """Below the tier's minimum the tier itself is unsupported; that reason is not repeated per test."""
    host(gpus)
    item = _Item(world_size=4)
    assert tiers.unrunnable_reason(item, "multigpu") == expected
    assert tiers.unrunnable_reason(item, "cpu") is None


def test_tiers_of_a_test_are_its_marker_else_every_tier_of_its_kind():
    assert tiers.tiers_for(_Item(), multi_rank=False) == ("cpu", "gpu")
    assert tiers.tiers_for(_Item(), multi_rank=True) == ("cpu", "multigpu")
    assert tiers.tiers_for(_Item(pytest.mark.tiers("multigpu", "gpu")), multi_rank=True) == (
        "multigpu",
        "gpu",
    )
    with pytest.raises(markers.MarkerError) as error:
        tiers.tiers_for(_Item(pytest.mark.tiers("cpu", "tpu")), multi_rank=False)
    assert str(error.value) == (
        "harness marker error: test_x.py::test_x: @pytest.mark.tiers: takes tier names, each one of "
        "['cpu', 'gpu', 'multigpu'], got tiers('cpu', 'tpu')"
    )


def test_tier_lists_are_trimmed_and_an_empty_one_is_refused():
    assert tiers.parse_tier_list(" cpu , multigpu ,") == ["cpu", "multigpu"]
    with pytest.raises(ValueError) as empty:
        tiers.parse_tier_list(" , ")
    assert str(empty.value) == "unknown tier ' , '; choose from ['cpu', 'gpu', 'multigpu']"


@pytest.mark.parametrize(("fake", "expected"), [(False, ("cuda", "nccl")), (True, ("cpu", "gloo"))])
def test_gpu_tiers_run_nccl_on_cuda_and_fake_gpus_gloo_on_cpu(host, fake, expected):
    host(2, fake=fake)
    for name in ("gpu", "multigpu"):
        assert (tiers.device_type_for(name), tiers.backend_for(name)) == expected
    assert (tiers.device_type_for("cpu"), tiers.backend_for("cpu")) == ("cpu", "gloo")


def test_only_gpu_tiers_get_the_deterministic_environment():
    assert tiers.startup_env("cpu") == {}
    for name in ("gpu", "multigpu"):
        assert tiers.startup_env(name) == {
            "CUBLAS_WORKSPACE_CONFIG": ":4096:8",
            "TORCHINDUCTOR_DETERMINISTIC": "1",
        }


def test_cpu_tier_leases_nothing(host):
    host(0)
    item = _Item()
    with tiers.lease(item, "cpu") as held:
        assert held == ()
    assert tiers.LAST_LEASE_KEY not in item.stash


def test_a_lease_is_taken_once_per_test_and_remembered_for_the_repro_line(host):
    host(2, fake=True)
    item = _Item(world_size=2)
    with tiers.lease(item, "multigpu") as held:
        assert held == ("fake0", "fake1")
        assert item.stash[tiers.LEASE_KEY] == held
        with tiers.lease(item, "multigpu") as again:  # the rank runner reuses the fixture's lease
            assert again == held
        with pytest.raises(devices.LeaseTimeout):  # both fake GPUs are held
            devices.lease(1, "other", timeout=0.1).__enter__()
    assert tiers.LEASE_KEY not in item.stash
    assert item.stash[tiers.LAST_LEASE_KEY] == ("fake0", "fake1")
    with devices.lease(2, "next", timeout=0.1):  # released
        pass


def test_determinism_is_put_back_after_a_gpu_tier_body(monkeypatch):
    import torch

    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    monkeypatch.delenv("TORCHINDUCTOR_DETERMINISTIC", raising=False)
    with tiers.determinism("gpu"):
        assert torch.are_deterministic_algorithms_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        assert os.environ["TORCHINDUCTOR_DETERMINISTIC"] == "1"
    assert not torch.are_deterministic_algorithms_enabled()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    assert "TORCHINDUCTOR_DETERMINISTIC" not in os.environ
    with tiers.determinism("cpu"):
        assert not torch.are_deterministic_algorithms_enabled()
        assert "TORCHINDUCTOR_DETERMINISTIC" not in os.environ


def test_determinism_is_strict_inside_and_the_callers_mode_and_inductors_flag_come_back(monkeypatch):
    """Inside, errors (not warnings) on nondeterministic ops, and inductor, when loaded, agrees."""
    import types

    import torch

    inductor_config = types.SimpleNamespace(deterministic=False)
    monkeypatch.setitem(sys.modules, "torch._inductor.config", inductor_config)
    torch._C._set_deterministic_algorithms(True, warn_only=True)  # without importing inductor
    try:
        with tiers.determinism("multigpu"):
            assert torch.are_deterministic_algorithms_enabled()
            assert not torch.is_deterministic_algorithms_warn_only_enabled()
            assert inductor_config.deterministic is True
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
        assert inductor_config.deterministic is True  # the caller's mode, True
    finally:
        tiers.set_deterministic(False)
    assert not torch.are_deterministic_algorithms_enabled()
    assert not torch.is_deterministic_algorithms_warn_only_enabled()
    assert inductor_config.deterministic is False
