"""`ac.budget.costs`: how the measured probe times become per-op, per-region and matmul-rate prices."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from ac.budget import costs
from tests.fake_clock import Clock, install

pytestmark = pytest.mark.tiers("cpu")

# A device where one eager op costs 3 us, SAC adds 40 us per op (forward and recompute
# together), a checkpointed region 500 us and matmuls run at 2 TFLOP/s.
OP_S, SAC_S, REGION_S, FLOPS_PER_S = 3e-6, 4e-5, 5e-4, 2e12
BACKWARD_S = 7e-5  # a plain sin-sum-backward, with or without a region around it


@pytest.fixture
def clock(monkeypatch) -> Clock:
    """A fake clock; `probes(clock)` advance it by what each probe costs on the device above."""
    clock = install(monkeypatch)
    clock.seen = []
    return clock


def probes(clock: Clock, **overrides) -> costs.Probes:
    """Probes priced by the constants above; each records the device and grad of its tensor."""

    def probe(name: str, seconds_per_call: float):
        def run(x: torch.Tensor, count: int) -> None:
            clock.seen.append((name, x.device, x.requires_grad))
            clock.now += count * seconds_per_call

        return run

    def matmuls(a: torch.Tensor, count: int) -> None:
        clock.seen.append(("matmuls", a.device, a.requires_grad))
        clock.now += count * 2 * a.shape[0] ** 3 / FLOPS_PER_S

    fields = {
        "tiny_ops": probe("tiny", OP_S),
        "under_sac": probe("sac", 2 * OP_S + SAC_S),
        "regions": probe("regions", REGION_S + BACKWARD_S),
        "plain": probe("plain", BACKWARD_S),
        "matmuls": matmuls,
    }
    return costs.Probes(**{**fields, **overrides})


def test_measure_turns_probe_times_into_per_op_region_and_matmul_prices(clock):
    device = torch.device("meta")
    measured = costs.measure(device, probes(clock))
    expected = costs.DeviceCosts(FLOPS_PER_S, OP_S, SAC_S, REGION_S)
    assert dataclasses.asdict(measured) == pytest.approx(dataclasses.asdict(expected), rel=1e-9)
    # Every probe ran on the device measured, the region probes on a tensor that needs grad.
    assert {(name, dev) for name, dev, _ in clock.seen} == {
        (name, device) for name in ("tiny", "sac", "regions", "plain", "matmuls")
    }
    assert {name for name, _, grad in clock.seen if grad} == {"regions", "plain"}


def test_measured_noise_below_zero_is_priced_at_zero(clock):
    """A SAC or region probe that ran faster than its plain twin (timing noise) costs nothing, not less."""

    def as_fast_as_plain_ops(x: torch.Tensor, count: int) -> None:
        clock.now += count * OP_S

    def nearly_free(x: torch.Tensor, count: int) -> None:
        clock.now += 1e-6

    measured = costs.measure(
        torch.device("meta"), probes(clock, under_sac=as_fast_as_plain_ops, regions=nearly_free)
    )
    assert (measured.sac_dispatch_s, measured.region_s) == (0.0, 0.0)


def test_median_of_the_runs_is_taken(monkeypatch):
    clock = install(monkeypatch)
    durations = iter([5.0, 1.0, 3.0, 2.0, 4.0])

    def run() -> None:
        clock.now += next(durations)

    assert costs.median_s(run, torch.device("cpu"), repeats=5) == 3.0


def test_cuda_runs_are_timed_between_synchronizations_of_that_device(monkeypatch):
    """Kernels run asynchronously: without a sync on the measured GPU the clock times the launch."""
    events = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: events.append(("sync", device)))
    device = torch.device("cuda", 1)
    costs.median_s(lambda: events.append(("run", None)), device, repeats=3)
    assert events == [("sync", device), ("run", None), ("sync", device)] * 3


def test_measuring_warns_nothing():
    """It runs inside a user's first training step: the probes use checkpoint as AC does, without warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        costs.measure(torch.device("meta"), costs.Probes(repeats=1))


def test_region_probe_times_the_non_reentrant_checkpoint_ac_uses(monkeypatch):
    """The region price is what AC's own regions cost: reentrant checkpointing is another mechanism."""
    flavours = []

    def recording(*args, **kwargs):
        flavours.append(kwargs.get("use_reentrant"))
        return checkpoint(*args, **kwargs)

    monkeypatch.setattr(costs, "checkpoint", recording)
    costs.Probes().regions(torch.ones(4, requires_grad=True), 3)
    assert flavours == [False] * 3
