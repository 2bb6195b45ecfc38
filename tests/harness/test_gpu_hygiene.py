"""GPU hygiene: who may hold memory on a leased device, and memory a test leaves behind.

The rules run on CPU with a made-up process tree; what reads NVML and CUDA's
allocator skips with a reason where there is no CUDA device.
"""

from __future__ import annotations

import os

import pytest
import torch

from harness import gpu_hygiene
from harness.gpu_hygiene import Holder

pytestmark = [pytest.mark.tiers("cpu"), pytest.mark.timeout(60)]

# pid -> parent: 10 is the run's root (the xdist controller), 20 this worker, 21 its rank,
# 30 another worker with a pooled rank 31; 40 a leftover of this run reparented to init; 50 foreign.
PARENTS = {10: 1, 20: 10, 21: 20, 30: 10, 31: 30, 40: 1, 50: 1}
RUNS = {20: 10, 21: 10, 30: 10, 31: 10, 40: 10}
MIB = 2**20


def _unclean(*pids: int) -> list[str]:
    holders = [Holder(pid, 512 * MIB) for pid in pids]
    return gpu_hygiene.unclean(holders, me=20, run_root=10, parent=PARENTS.get, run=RUNS.get)


def test_this_tests_processes_and_other_workers_pooled_ranks_may_hold_memory():
    assert _unclean(20, 21, 31) == []


def test_a_process_outside_the_run_or_left_by_an_ended_test_is_named():
    outside, leftover = _unclean(50, 40)
    assert outside.startswith("pid 50 (") and outside.endswith("outside this run, holds 512 MiB")
    assert leftover.startswith("pid 40 (") and leftover.endswith(
        "left by an ended test of this run, holds 512 MiB"
    )


def test_a_process_knows_its_parent_and_its_run(monkeypatch):
    assert gpu_hygiene.parent_of(os.getpid()) == os.getppid()
    assert gpu_hygiene.parent_of(2**22 + 1) is None  # beyond pid_max: no such process


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
def test_memory_a_test_leaves_allocated_is_a_warning_naming_it():
    left = pytest.warns(gpu_hygiene.GpuMemoryLeft, match=r"the-test left 4096 bytes of CUDA memory")
    with left, gpu_hygiene.memory_left_warning(0, "the-test"):
        kept = torch.empty(1024, device="cuda:0")
    del kept


@needs_cuda
def test_nvml_sees_this_process_holding_memory():
    pytest.importorskip("pynvml", reason="NVML's Python binding (nvidia-ml-py) is not installed")
    kept = torch.empty(1024, device="cuda:0")
    holders = gpu_hygiene.memory_holders("0")
    assert holders is not None and os.getpid() in [h.pid for h in holders]
    del kept
