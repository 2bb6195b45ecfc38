"""GPU hygiene between tests: a leased device starts clean, a test's memory is its own to free.

Before a lease on real GPUs is handed to a test, NVML (pynvml, as
torch.cuda.list_gpu_processes uses it) must show no process holding memory on
its devices that is outside this run, or left over from an ended test (it
carries the run's RUN_PID_ENV but is no longer below the run's root process).
The harness waits `CLEAN_WAIT_S` for it to go, then fails the test's setup
naming the holder. Pooled ranks of other workers are not leftovers: their pool
owns them and ends them. After a test, CUDA memory it
left allocated in its own process is a `GpuMemoryLeft` warning naming it.
Under HARNESS_FAKE_GPUS, or without pynvml, there is nothing to look at.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness import devices

RUN_PID_ENV = "HARNESS_RUN_PID"  # the pytest process that started the run (the xdist controller)
CLEAN_WAIT_S = 30.0
_POLL_S = 0.5


class GpuMemoryLeft(pytest.PytestWarning):
    """A test left CUDA memory allocated in its own process."""


@dataclass(frozen=True)
class Holder:
    pid: int
    used_bytes: int


def record_run() -> None:
    """Mark this process as the run's root, for its workers and ranks to inherit."""
    os.environ.setdefault(RUN_PID_ENV, str(os.getpid()))


def parent_of(pid: int) -> int | None:
    """The parent pid from /proc, or None when the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[1])


def _ancestors(pid: int, parent: Callable[[int], int | None]) -> list[int]:
    chain = []
    current = parent(pid)
    while current not in (None, 0) and current not in chain:
        chain.append(current)
        current = parent(current) if current != 1 else None
    return chain


def run_of(pid: int) -> int | None:
    """The run a process belongs to, from the RUN_PID_ENV it inherited; None if none or unreadable."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    prefix = f"{RUN_PID_ENV}=".encode()
    value = next((entry[len(prefix) :] for entry in environ if entry.startswith(prefix)), b"")
    return int(value) if value.isdigit() else None


def unclean(
    holders: list[Holder],
    me: int,
    run_root: int,
    parent: Callable[[int], int | None] = parent_of,
    run: Callable[[int], int | None] = run_of,
) -> list[str]:
    """What about these holders makes a device unclean for a test of process `me`: a process
    outside the run, or one of the run no longer below its root (its test's process ended)."""
    problems = []
    for holder in holders:
        lineage = _ancestors(holder.pid, parent)
        if holder.pid == me or me in lineage:
            continue  # this test's own (its ranks included)
        if holder.pid == run_root or run_root in lineage:
            continue  # another worker's pooled ranks: their pool owns and ends them
        used = f"{holder.used_bytes / 2**20:.0f} MiB"
        whose = "left by an ended test of this run" if run(holder.pid) == run_root else "outside this run"
        problems.append(f"pid {holder.pid} ({_command(holder.pid)}), {whose}, holds {used}")
    return problems


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()[:80]
    except OSError:
        return "?"


def memory_holders(device_id: str) -> list[Holder] | None:
    """Processes with memory on a device (a CUDA_VISIBLE_DEVICES entry: ordinal or UUID) per NVML;
    None where NVML cannot tell (no pynvml, no driver). An ordinal is read as NVML's index,
    which is CUDA's with CUDA_DEVICE_ORDER=PCI_BUS_ID; UUIDs are exact."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        if device_id.isdigit():
            handle = pynvml.nvmlDeviceGetHandleByIndex(int(device_id))
        else:
            handle = pynvml.nvmlDeviceGetHandleByUUID(device_id)
        procs = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
    except pynvml.NVMLError:
        return None
    return [Holder(p.pid, p.usedGpuMemory or 0) for p in procs]


def wait_until_clean(device_ids: tuple[str, ...], holder: str, wait_s: float = CLEAN_WAIT_S) -> None:
    """Return once no device of the lease is unclean; fail the test's setup naming what holds one."""
    if devices.fake_gpu_count() or not device_ids:
        return
    run_root = int(os.environ.get(RUN_PID_ENV, os.getpid()))
    deadline = time.monotonic() + wait_s
    while True:
        problems = []
        for device in device_ids:
            found = memory_holders(device)
            if found is None:
                return  # NVML cannot tell: nothing to check against
            problems += [f"GPU {device}: {p}" for p in unclean(found, os.getpid(), run_root)]
        if not problems:
            return
        if time.monotonic() > deadline:
            pytest.fail(
                f"{holder}: leased GPUs not clean after {wait_s:.0f}s: " + "; ".join(problems), pytrace=False
            )
        time.sleep(_POLL_S)


@contextlib.contextmanager
def memory_left_warning(device_index: int | None, test: str) -> Iterator[None]:
    """Warn when the block ends with more CUDA memory allocated on the device than it began with."""
    if device_index is None:
        yield
        return
    import torch

    before = torch.cuda.memory_allocated(device_index)
    yield
    left = torch.cuda.memory_allocated(device_index) - before
    if left > 0:
        warnings.warn(
            GpuMemoryLeft(f"{test} left {left} bytes of CUDA memory allocated on cuda:{device_index}"),
            stacklevel=1,
        )
