"""`ac.budget.costs`: how the measured probe times become per-op, per-region and matmul-rate prices."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterator

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.checkpoint import checkpoint

from ac.budget import costs
from tests.fake_clock import Clock, install

pytestmark = pytest.mark.tiers("cpu")

# A device where one eager op costs 3 us, SAC adds 40 us per op (forward and recompute
# together), a checkpointed region 500 us and matmuls run at 2 TFLOP/s.
OP_S, SAC_S, REGION_S, FLOPS_PER_S = 3e-6, 4e-5, 5e-4, 2e12
BACKWARD_S = 7e-5  # a plain sin-sum-backward, with or without a region around it


class _TimedMatmuls(TorchDispatchMode):
    """Matmuls cost their flops at FLOPS_PER_S on the clock; records the device they ran on."""

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock = clock
        self.devices: set[torch.device] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.mm.default:
            a, b = args
            self.clock.now += 2 * a.shape[0] * a.shape[1] * b.shape[1] / FLOPS_PER_S
            self.devices.add(a.device)
        return func(*args, **(kwargs or {}))


@pytest.fixture
def clock(monkeypatch) -> Iterator[Clock]:
    """Probes priced by the constants above, on the meta device (nothing is computed); each
    probe advances the clock by what it costs on that device."""
    clock = install(monkeypatch)
    seen: list[tuple[str, torch.device, bool]] = []

    def probe(name: str, seconds: float):
        def run(x: torch.Tensor) -> None:
            seen.append((name, x.device, x.requires_grad))
            clock.now += seconds

        return run

    monkeypatch.setattr(costs, "_tiny_ops", probe("tiny", costs._TINY_OPS * OP_S))
    monkeypatch.setattr(costs, "_under_sac", probe("sac", costs._TINY_OPS * (2 * OP_S + SAC_S)))
    monkeypatch.setattr(costs, "_regions", probe("regions", costs._REGIONS * (REGION_S + BACKWARD_S)))
    monkeypatch.setattr(costs, "_plain", probe("plain", costs._REGIONS * BACKWARD_S))
    clock.seen = seen
    with _TimedMatmuls(clock) as clock.matmuls:
        yield clock


def test_measure_turns_probe_times_into_per_op_region_and_matmul_prices(clock):
    device = torch.device("meta")
    measured = costs._measure(device)
    expected = costs.DeviceCosts(FLOPS_PER_S, OP_S, SAC_S, REGION_S)
    assert dataclasses.asdict(measured) == pytest.approx(dataclasses.asdict(expected), rel=1e-9)
    # Every probe ran on the device measured, the region probes on a tensor that needs grad.
    assert clock.matmuls.devices == {device}
    assert {(name, dev) for name, dev, _ in clock.seen} == {
        (name, device) for name in ("tiny", "sac", "regions", "plain")
    }
    assert {name for name, _, grad in clock.seen if grad} == {"regions", "plain"}


def test_measured_noise_below_zero_is_priced_at_zero(monkeypatch, clock):
    """A SAC or region probe that ran faster than its plain twin (timing noise) costs nothing, not less."""
    monkeypatch.setattr(
        costs, "_under_sac", lambda x: setattr(clock, "now", clock.now + costs._TINY_OPS * OP_S)
    )
    monkeypatch.setattr(costs, "_regions", lambda x: setattr(clock, "now", clock.now + 1e-6))
    measured = costs._measure(torch.device("meta"))
    assert (measured.sac_dispatch_s, measured.region_s) == (0.0, 0.0)


def test_median_of_five_runs_is_taken(monkeypatch):
    clock = install(monkeypatch)
    durations = iter([5.0, 1.0, 3.0, 2.0, 4.0])

    def run() -> None:
        clock.now += next(durations)

    assert costs._median_s(run, torch.device("cpu")) == 3.0


def test_cuda_runs_are_timed_between_synchronizations_of_that_device(monkeypatch):
    """Kernels run asynchronously: without a sync on the measured GPU the clock times the launch."""
    events = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: events.append(("sync", device)))
    device = torch.device("cuda", 1)
    costs._median_s(lambda: events.append(("run", None)), device)
    assert events == [("sync", device), ("run", None), ("sync", device)] * costs._REPEATS


def test_measuring_warns_nothing():
    """It runs inside a user's first training step: the probes use checkpoint as AC does, without warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        costs._measure(torch.device("meta"))


def test_region_probe_times_the_non_reentrant_checkpoint_ac_uses(monkeypatch):
    """The region price is what AC's own regions cost: reentrant checkpointing is another mechanism."""
    flavours = []

    def recording(*args, **kwargs):
        flavours.append(kwargs.get("use_reentrant"))
        return checkpoint(*args, **kwargs)

    monkeypatch.setattr(costs, "checkpoint", recording)
    costs._regions(torch.ones(4, requires_grad=True))
    assert flavours == [False] * costs._REGIONS
