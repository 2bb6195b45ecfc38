"""What time a plan costs on the running device, measured once per process.

Eager selective checkpointing runs a Python dispatch mode over every op of the
region, in forward and again in the recompute; on small ops that, not flops,
decides the step time. So the planner prices a plan in seconds: each
recomputed op at the time it took in the block's timed forward (or, untimed,
its flops at the device's matmul rate plus a small-op cost), the SAC dispatch
cost on every op of a region under a dispatch mode, and a cost per
checkpointed region.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import _disable_current_modes
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from ac.budget.profile import OpCost

_TINY_OPS = 200
_REGIONS = 20
_REPEATS = 5


@dataclass(frozen=True)
class DeviceCosts:
    flops_per_s: float
    op_s: float  # one small eager op, dispatch included
    sac_dispatch_s: float  # extra per op under SAC: forward (caching) plus recompute (cached)
    region_s: float  # one checkpointed region: its wrapper in forward and its recompute set-up
    op_times: bool = True  # price an op at the time it took in a timed forward, where it has one

    def recompute_s(self, ops: Iterable[OpCost]) -> float:
        """Seconds to run these ops again: as timed where they were, else from flops."""
        return sum(((self.op_times and op.seconds) or op.flops / self.flops_per_s) + self.op_s for op in ops)


# Compiled regions: a dispatch mode only tags the graph, ops fuse; flops decide.
COMPILED = DeviceCosts(flops_per_s=1e12, op_s=0.0, sac_dispatch_s=0.0, region_s=0.0, op_times=False)


def timed_s(fn: Callable[[], object], device: torch.device) -> float:
    """Wall time of `fn()` on `device`: kernels run asynchronously, so a GPU is synchronized
    before and after, or the clock would time the launches."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _median_s(fn: Callable[[], object], device: torch.device) -> float:
    return statistics.median(timed_s(fn, device) for _ in range(_REPEATS))


def _tiny_ops(x: torch.Tensor) -> None:
    for _ in range(_TINY_OPS):
        x.add(1.0)


def _recompute_all(ctx: object, func: object, *args: object, **kwargs: object) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_RECOMPUTE


def _under_sac(x: torch.Tensor) -> None:
    caching, cached = create_selective_checkpoint_contexts(_recompute_all)
    with caching:
        _tiny_ops(x)
    with cached:
        _tiny_ops(x)


def _regions(x: torch.Tensor) -> None:
    for _ in range(_REGIONS):
        checkpoint(torch.sin, x, use_reentrant=False).sum().backward()


def _plain(x: torch.Tensor) -> None:
    for _ in range(_REGIONS):
        torch.sin(x).sum().backward()


@functools.cache
def measure(device: torch.device) -> DeviceCosts:
    """Matmul rate, small-op cost, SAC dispatch cost and region cost on `device`.

    Draws no random numbers: it runs inside a training step, whose RNG stream must
    not move; and outside any dispatch mode (a FlopCounterMode, a MemTracker) measuring it.
    """
    with _disable_current_modes():
        return _measure(device)


def _measure(device: torch.device) -> DeviceCosts:
    with torch.no_grad():
        x = torch.ones(16, device=device)
        size = 512 if device.type == "cuda" else 192
        a = torch.full((size, size), 0.5, device=device)
        _tiny_ops(x)  # warm-up
        op_s = _median_s(lambda: _tiny_ops(x), device) / _TINY_OPS
        sac_s = _median_s(lambda: _under_sac(x), device) / _TINY_OPS - 2 * op_s
        matmul_s = _median_s(lambda: [a @ a for _ in range(8)], device) / 8
    with torch.enable_grad():
        leaf = torch.ones(16, device=device, requires_grad=True)
        region_s = (
            _median_s(lambda: _regions(leaf), device) - _median_s(lambda: _plain(leaf), device)
        ) / _REGIONS
    return DeviceCosts(2 * size**3 / matmul_s, op_s, max(sac_s, 0.0), max(region_s, 0.0))
