"""What the `tier` fixture hands a body: its device, its tolerances, and CUDA-only measures refused off CUDA."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from harness import devices, measure, tiers
from harness.env import TierEnv

# A self-test fails within 60 s when what it checks hangs, not at the suite-wide 600 s.
pytestmark = [pytest.mark.tiers("cpu"), pytest.mark.timeout(60)]


@pytest.fixture
def no_fake_gpus(monkeypatch):
    monkeypatch.delenv(devices.FAKE_GPUS_ENV, raising=False)


def test_float32_and_float64_compare_bitwise_on_cpu_and_in_deterministic_tiers():
    for env in (TierEnv("cpu", "cpu", "gloo"), TierEnv("gpu", "cuda", "nccl", ("0",), deterministic=True)):
        assert env.tolerances() == env.tolerances(torch.float64) == (0.0, 0.0)
        assert env.tolerances(torch.bfloat16) == (1.6e-2, 1e-5)


def test_cuda_without_determinism_compares_with_assert_closes_defaults():
    env = TierEnv("gpu", "cuda", "nccl", ("0",))
    assert [env.tolerances(d) for d in (torch.float32, torch.float64, torch.float16, torch.bfloat16)] == [
        (1.3e-6, 1e-5),
        (1e-7, 1e-7),
        (1e-3, 1e-5),
        (1.6e-2, 1e-5),
    ]
    assert env.tolerances(torch.float8_e4m3fn) == (1.6e-2, 1e-5)  # unlisted: the loosest


def test_a_rank_takes_the_leased_device_at_its_local_rank(monkeypatch, no_fake_gpus):
    monkeypatch.setenv(devices.PHYSICAL_GPUS_ENV, "2,5,7")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5,7")
    monkeypatch.setenv("LOCAL_RANK", "1")
    env = TierEnv("multigpu", "cuda", "nccl", ("5", "7"))
    assert env.device == torch.device("cuda", 2) and env.is_cuda
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")  # not pinned: indexes the recorded list
    monkeypatch.delenv("LOCAL_RANK")
    assert env.device == torch.device("cuda", 1)
    assert TierEnv("cpu", "cpu", "gloo").device == torch.device("cpu")


def test_a_pinned_worker_sees_only_its_home_device(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5")
    assert devices.cuda_index("5") == 0
    with pytest.raises(ValueError):
        devices.cuda_index("7")


@pytest.mark.parametrize("what", ["cuda_peak_bytes", "cuda_activation_bytes"])
def test_cuda_measures_skip_under_fake_gpus_and_fail_on_the_cpu_tier(monkeypatch, what):
    monkeypatch.setenv(devices.FAKE_GPUS_ENV, "1")
    fake = tiers.tier_env("gpu", ("fake0",))
    assert (fake.device_type, fake.backend, fake.deterministic) == ("cpu", "gloo", True)
    with pytest.raises(pytest.skip.Exception) as skipped:
        getattr(fake, what)(lambda: None)
    assert skipped.value.msg == f"{what} needs real CUDA; HARNESS_FAKE_GPUS runs tier 'gpu' on CPU"
    with pytest.raises(RuntimeError, match="needs a CUDA tier; this is tier 'cpu' on cpu"):
        getattr(TierEnv("cpu", "cpu", "gloo"), what)(lambda: None)  # fake GPUs or not
    monkeypatch.setenv(devices.FAKE_GPUS_ENV, "0")
    for env in (TierEnv("cpu", "cpu", "gloo"), TierEnv("gpu", "cpu", "gloo", ("fake0",))):
        with pytest.raises(RuntimeError) as error:
            getattr(env, what)(lambda: None)
        assert str(error.value) == f"{what} needs a CUDA tier; this is tier {env.name!r} on cpu"


def _with_grads(*grads: float) -> torch.nn.Module:
    model = torch.nn.Linear(len(grads), 1, bias=False)
    model.weight.grad = torch.tensor([grads])
    return model


def test_grads_compare_bitwise_only_when_both_tolerances_are_zero():
    exact, near = _with_grads(1.0, 2.0), _with_grads(1.0, 2.5)
    measure.assert_grads_match(exact, _with_grads(1.0, 2.0))
    with pytest.raises(AssertionError, match=r"weight: gradients are not bitwise equal \(max abs diff 0.5\)"):
        measure.assert_grads_match(exact, near)
    measure.assert_grads_match(exact, near, rtol=0.0, atol=1.0)
    measure.assert_grads_match(exact, near, rtol=0.25, atol=0.0)
    with pytest.raises(AssertionError, match="weight: Tensor-likes are not close"):
        measure.assert_grads_match(exact, near, rtol=0.0, atol=0.1)


def test_bitwise_means_bitwise_one_ulp_apart_is_a_difference():
    expected, actual = nn.Linear(3, 2), nn.Linear(3, 2)
    actual.load_state_dict(expected.state_dict())
    for model in (expected, actual):
        model(torch.ones(1, 3)).sum().backward()
    measure.assert_grads_match(expected, actual)
    with torch.no_grad():
        actual.weight.grad[1, 2] = torch.nextafter(actual.weight.grad[1, 2], torch.tensor(float("inf")))
    with pytest.raises(AssertionError, match="weight: gradients are not bitwise equal"):
        measure.assert_grads_match(expected, actual)
    measure.assert_grads_match(expected, actual, rtol=1e-6, atol=0.0)  # within a tolerance it passes
