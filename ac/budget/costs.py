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

import dataclasses
import functools
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import _disable_current_modes
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from ac import traced
from ac.budget.profile import OpCost


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

# torch.compile backends that run a traced graph of eager kernels: the "traced eager" path
# (ac.traced's backend, the recommended one, and aot_eager, which it speeds up).
EAGER_KERNEL_BACKENDS = (traced.NAME, "aot_eager")


def traced_eager(measured: DeviceCosts) -> DeviceCosts:
    """Prices in a traced region of eager kernels: each op costs what it does eagerly, but
    SAC only tags the graph (no dispatch mode runs) and a region is no Python wrapper."""
    return dataclasses.replace(measured, sac_dispatch_s=0.0, region_s=0.0)


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


def median_s(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median wall time of `repeats` runs of `fn()` on `device`."""
    return statistics.median(timed_s(fn, device) for _ in range(repeats))


def tiny_ops(x: torch.Tensor, count: int) -> None:
    """`count` small eager ops."""
    for _ in range(count):
        x.add(1.0)


def _recompute_all(ctx: object, func: object, *args: object, **kwargs: object) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_RECOMPUTE


def tiny_ops_under_sac(x: torch.Tensor, count: int) -> None:
    """The same small ops under SAC's caching and then its cached dispatch mode."""
    caching, cached = create_selective_checkpoint_contexts(_recompute_all)
    with caching:
        tiny_ops(x, count)
    with cached:
        tiny_ops(x, count)


def regions(x: torch.Tensor, count: int) -> None:
    """`count` tiny non-reentrant checkpointed regions (as AC runs them), each with its backward."""
    for _ in range(count):
        checkpoint(torch.sin, x, use_reentrant=False).sum().backward()


def plain(x: torch.Tensor, count: int) -> None:
    """What `regions` runs, without the checkpoint."""
    for _ in range(count):
        torch.sin(x).sum().backward()


def matmuls(a: torch.Tensor, count: int) -> None:
    """`count` square matmuls of `a`."""
    for _ in range(count):
        a @ a


@dataclass(frozen=True)
class Probes:
    """What `measure` runs and times. Tests and benchmarks pass their own to pin the
    prices (e.g. probes that advance a fake clock by known durations)."""

    tiny_ops: Callable[[torch.Tensor, int], None] = tiny_ops
    under_sac: Callable[[torch.Tensor, int], None] = tiny_ops_under_sac
    regions: Callable[[torch.Tensor, int], None] = regions
    plain: Callable[[torch.Tensor, int], None] = plain
    matmuls: Callable[[torch.Tensor, int], None] = matmuls
    tiny_count: int = 200
    region_count: int = 20
    matmul_count: int = 8
    repeats: int = 5


@functools.cache
def measure(device: torch.device, probes: Probes = Probes()) -> DeviceCosts:
    """Matmul rate, small-op cost, SAC dispatch cost and region cost on `device`.

    Draws no random numbers: it runs inside a training step, whose RNG stream must
    not move; and outside any dispatch mode (a FlopCounterMode, a MemTracker) measuring it.
    """
    with _disable_current_modes():
        return _measure(device, probes)


def _measure(device: torch.device, probes: Probes) -> DeviceCosts:
    def median(fn: Callable[[], object]) -> float:
        return median_s(fn, device, probes.repeats)

    tiny, regions_n = probes.tiny_count, probes.region_count
    with torch.no_grad():
        x = torch.ones(16, device=device)
        size = 512 if device.type == "cuda" else 192
        a = torch.full((size, size), 0.5, device=device)
        probes.tiny_ops(x, tiny)  # warm-up
        op_s = median(lambda: probes.tiny_ops(x, tiny)) / tiny
        sac_s = median(lambda: probes.under_sac(x, tiny)) / tiny - 2 * op_s
        matmul_s = median(lambda: probes.matmuls(a, probes.matmul_count)) / probes.matmul_count
    with torch.enable_grad():
        leaf = torch.ones(16, device=device, requires_grad=True)
        region_s = (
            median(lambda: probes.regions(leaf, regions_n)) - median(lambda: probes.plain(leaf, regions_n))
        ) / regions_n
    return DeviceCosts(2 * size**3 / matmul_s, op_s, max(sac_s, 0.0), max(region_s, 0.0))
