"""Step time: the one wall-time figure the report and the benchmarks print, with its spread."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import torch

from ac.budget.costs import timed_s
from harness.measure import Step, scalar_loss


@dataclass(frozen=True)
class StepTime:
    """Median and quartiles of one step's wall time over interleaved rounds, in ms."""

    median_ms: float
    q1_ms: float
    q3_ms: float

    @property
    def iqr_ms(self) -> float:
        return self.q3_ms - self.q1_ms

    def faster_than(self, other: StepTime) -> bool:
        """Faster beyond the spread: this step's upper quartile is below the other's lower one."""
        return self.q3_ms < other.q1_ms

    def __str__(self) -> str:
        return f"{self.median_ms:.2f} [{self.q1_ms:.2f}-{self.q3_ms:.2f}]"


def spread(times_ms: list[float]) -> StepTime:
    """Median and quartiles (inclusive method: within the range measured) of `times_ms`."""
    if len(times_ms) < 2:
        return StepTime(times_ms[0], times_ms[0], times_ms[0])
    q1, median, q3 = statistics.quantiles(times_ms, n=4, method="inclusive")
    return StepTime(median, q1, q3)


def step_times(steps: dict[str, Step], device: torch.device, warmup: int, timed: int) -> dict[str, StepTime]:
    """Wall time of one forward+backward per step, the steps interleaved so a busy machine
    slows all alike; `warmup` rounds (profiles, compiles, allocator) excluded."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for round_ in range(warmup + timed):
        for name, step in steps.items():
            seconds = timed_s(lambda step=step: scalar_loss(step()).backward(), device)
            if round_ >= warmup:
                times[name].append(1e3 * seconds)
    return {name: spread(ts) for name, ts in times.items()}
