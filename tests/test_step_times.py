"""`ackit.timing.step_times`: median and quartiles of the timed rounds, warm-up excluded, steps interleaved."""

from __future__ import annotations

import pytest
import torch

from ackit import timing
from tests.fake_clock import Clock, install

pytestmark = pytest.mark.tiers("cpu")


def _timed_step(clock: Clock, name: str, seconds: list[float], calls: list[str]):
    """A step that takes the next of `seconds` on the clock, forward and backward together."""
    durations = iter(seconds)

    def step() -> torch.Tensor:
        calls.append(name)
        clock.now += next(durations)
        return torch.ones(2, requires_grad=True)

    return step


def test_median_of_timed_rounds_in_ms_after_warmup_with_steps_interleaved(monkeypatch):
    clock, calls = install(monkeypatch), []
    steps = {
        "fast": _timed_step(clock, "fast", [9.0, 9.0, 0.001, 0.004, 0.002], calls),
        "slow": _timed_step(clock, "slow", [8.0, 8.0, 0.010, 0.030, 0.020], calls),
    }
    times = timing.step_times(steps, torch.device("cpu"), warmup=2, timed=3)
    assert times["fast"].median_ms == pytest.approx(2.0)
    assert times["slow"].median_ms == pytest.approx(20.0)
    assert (times["slow"].q1_ms, times["slow"].q3_ms) == pytest.approx((15.0, 25.0))
    assert calls == ["fast", "slow"] * 5


def test_quartiles_are_within_the_times_measured():
    assert timing.spread([4.0, 1.0, 3.0, 2.0, 100.0]) == timing.StepTime(3.0, 2.0, 4.0)
    assert timing.spread([7.0]) == timing.StepTime(7.0, 7.0, 7.0)


def test_faster_only_beyond_the_spread():
    slow, overlapping, fast = timing.StepTime(10, 9, 12), timing.StepTime(8, 7, 9.5), timing.StepTime(6, 5, 7)
    assert fast.faster_than(slow) and not overlapping.faster_than(slow)
    assert not slow.faster_than(fast) and not slow.faster_than(slow)


def test_cuda_steps_are_timed_between_synchronizations_of_that_device(monkeypatch):
    events = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: events.append(("sync", device)))

    def step() -> torch.Tensor:
        events.append(("step", None))
        return torch.ones((), requires_grad=True)

    device = torch.device("cuda", 1)
    timing.step_times({"only": step}, device, warmup=1, timed=1)
    assert events == [("sync", device), ("step", None), ("sync", device)] * 2
