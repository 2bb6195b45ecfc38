"""Step time: the one wall-time figure the report and the benchmarks print."""

from __future__ import annotations

import statistics

import torch

from ac.budget.costs import timed_s
from harness.measure import Step, scalar_loss


def step_times_ms(steps: dict[str, Step], device: torch.device, warmup: int, timed: int) -> dict[str, float]:
    """Median wall time of one forward+backward per step, the steps interleaved so a busy
    machine slows all alike; `warmup` rounds (profiles, compiles, allocator) excluded."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for round_ in range(warmup + timed):
        for name, step in steps.items():
            seconds = timed_s(lambda step=step: scalar_loss(step()).backward(), device)
            if round_ >= warmup:
                times[name].append(1e3 * seconds)
    return {name: statistics.median(ts) for name, ts in times.items()}
