"""GPU discovery, per-worker pinning and disjoint device leases.

Leases are `flock`s on one file per device in a directory shared by every
process on the host, so xdist workers (and several CI runners) never hand the
same GPU to two tests at once, and a crashed holder frees its devices because
the kernel drops its locks. `HARNESS_FAKE_GPUS=N` swaps in N virtual devices so
all of this runs, and is tested, on a CPU-only machine.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

from harness import lease_queue, safe_paths

FAKE_GPUS_ENV = "HARNESS_FAKE_GPUS"
PHYSICAL_GPUS_ENV = "HARNESS_PHYSICAL_GPUS"  # the caller's visible list, before pinning
HOME_GPU_ENV = "HARNESS_HOME_GPU"  # the device this xdist worker was pinned to
LEASE_DIR_ENV = "HARNESS_LEASE_DIR"
LEASE_LOG_ENV = "HARNESS_LEASE_LOG"
LEASE_TIMEOUT_ENV = "HARNESS_LEASE_TIMEOUT"
DEFAULT_LEASE_TIMEOUT_S = 1800.0
# The most GPUs one host gives (HGX-2, DGX-2: 16): more fake ones, or a test needing more
# than this and than the host shows, is a mistake, not a wait.
MAX_HOST_GPUS = 16
# The longest any harness wait may be (7 days): beyond it, timeouts overflow C timers.
MAX_WAIT_S = 7 * 24 * 3600.0
_NVIDIA_DRIVER_GPUS = Path("/proc/driver/nvidia/gpus")
# The longest a waiting lease sleeps between looks: a device idles at most this long.
_MAX_POLL_S = 0.1


class LeaseTimeout(RuntimeError):
    """No set of free devices turned up in time."""


def fake_gpu_count() -> int:
    raw = os.environ.get(FAKE_GPUS_ENV, "0") or "0"
    if not raw.isdigit() or int(raw) > MAX_HOST_GPUS:
        raise ValueError(f"{FAKE_GPUS_ENV}={raw!r} must be an integer from 0 to {MAX_HOST_GPUS}")
    return int(raw)


def parse_seconds(text: str, label: str) -> float:
    """A wait in seconds, above 0 and at most `MAX_WAIT_S`; anything else names `label`."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds <= MAX_WAIT_S:
        raise ValueError(f"{label}: must be a number of seconds above 0 and at most {MAX_WAIT_S:g}")
    return seconds


def lease_timeout() -> float:
    """`HARNESS_LEASE_TIMEOUT`, checked, else the default."""
    raw = os.environ.get(LEASE_TIMEOUT_ENV)
    return DEFAULT_LEASE_TIMEOUT_S if raw is None else parse_seconds(raw, f"{LEASE_TIMEOUT_ENV}={raw!r}")


def parse_cuda_visible_devices(text: str) -> list[str]:
    """The devices a CUDA_VISIBLE_DEVICES value selects, read as CUDA reads it.

    Entries are ordinals (each read like strtoul: "1gpu" is 1) or GPU-/MIG- UUIDs;
    the list stops at the first invalid entry (so "-1" and "" select nothing), and
    a repeated entry selects nothing at all.
    """
    prefix = next((p for p in ("GPU-", "MIG-") if text.startswith(p)), None)
    selected: list[str] = []
    for raw in text.split(","):
        entry = raw.strip()
        if prefix is None:
            ordinal = re.match(r"\+?(\d+)", entry)
            if ordinal is None:
                break
            entry = str(int(ordinal.group(1)))
        elif not entry.startswith(prefix):
            break
        if entry in selected:
            return []
        selected.append(entry)
    return selected


def visible_gpus() -> list[str]:
    """The caller's usable devices, as CUDA_VISIBLE_DEVICES spells them.

    Read from the environment the first process recorded, so a pinned worker
    still knows the whole host's list. Otherwise counted by torch, which asks
    NVML and does not start CUDA: 0 on a CPU-only build or without a driver,
    whatever CUDA_VISIBLE_DEVICES says.
    """
    recorded = os.environ.get(PHYSICAL_GPUS_ENV)
    if recorded is not None:
        return [d for d in recorded.split(",") if d]
    fake = fake_gpu_count()
    if fake:
        return [f"fake{i}" for i in range(fake)]
    if not _NVIDIA_DRIVER_GPUS.is_dir():
        return []  # no NVIDIA driver: no need to pay for importing torch to learn that
    import torch

    count = torch.cuda.device_count()
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return [str(i) for i in range(count)]
    return parse_cuda_visible_devices(listed)[:count]


def gpu_count() -> int:
    return len(visible_gpus())


def record_visible_gpus() -> list[str]:
    """Freeze the visible list in the environment so child processes inherit it."""
    gpus = visible_gpus()
    os.environ[PHYSICAL_GPUS_ENV] = ",".join(gpus)
    return gpus


def pin_worker(worker_id: str) -> str | None:
    """Give xdist worker `gwN` its home device; must run before CUDA initialises."""
    gpus = visible_gpus()
    if not gpus or not worker_id.startswith("gw"):
        return None
    home = gpus[int(worker_id[2:]) % len(gpus)]
    os.environ[HOME_GPU_ENV] = home
    if not fake_gpu_count():
        os.environ["CUDA_VISIBLE_DEVICES"] = home
    return home


def cuda_index(device_id: str) -> int:
    """Index of a leased device among those this process can see."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    seen = visible.split(",") if visible is not None else visible_gpus()
    return seen.index(device_id)


def lease_dir() -> Path:
    """The lock folder, created 0700 and refused when another user could change it
    (group-shared only by the operator's choice: see `safe_paths`)."""
    path = Path(os.environ.get(LEASE_DIR_ENV) or safe_paths.user_temp_dir(safe_paths.LEASES_DIR))
    return safe_paths.secure_dir(path, allow_group=True)


def _log(event: str, devices: list[str], holder: str) -> None:
    log_path = os.environ.get(LEASE_LOG_ENV)
    if not log_path:
        return
    line = json.dumps({"t": time.time(), "event": event, "devices": devices, "holder": holder})
    # Never through a link planted where the log should be (the path is often in /tmp).
    fd = os.open(
        log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, safe_paths.PRIVATE_FILE_MODE
    )
    with os.fdopen(fd, "a") as log:
        log.write(line + "\n")


def _try_lock(path: Path) -> int | None:
    fd = safe_paths.open_lock(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _unlock(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def _home(count: int, gpus: list[str]) -> str | None:
    """The device a one-GPU lease is bound to: the worker's own (its CUDA_VISIBLE_DEVICES)."""
    home = os.environ.get(HOME_GPU_ENV)
    return home if count == 1 and home in gpus else None


def _candidates(count: int, gpus: list[str]) -> list[str]:
    """Search order: a one-device lease waits for the worker's home device."""
    home = os.environ.get(HOME_GPU_ENV)
    if count == 1 and home in gpus:
        return [home]
    if home in gpus:
        return [home] + [g for g in gpus if g != home]
    return gpus


def _take(mine: lease_queue.Ticket, gpus: list[str], lock_dir: Path) -> dict[str, int] | None:
    """Lock what `mine` is granted now, all or nothing (call under `lease_queue.turn`)."""
    probed = {device: fd for device in gpus if (fd := _try_lock(lock_dir / f"gpu-{device}.lock")) is not None}
    granted = lease_queue.grant(
        mine, list(probed), _candidates(mine.count, gpus), lease_queue.ahead_of(lock_dir, mine)
    )
    for device, fd in probed.items():
        if granted is None or device not in granted:
            _unlock(fd)
    return None if granted is None else {device: probed[device] for device in granted}


def _acquire(count: int, holder: str, gpus: list[str], lock_dir: Path, timeout: float) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    delay = 0.01
    with lease_queue.waiting(lock_dir, count, _home(count, gpus)) as mine:
        while True:
            with lease_queue.turn(lock_dir):
                held = _take(mine, gpus, lock_dir)
            if held is not None:
                return held
            if time.monotonic() > deadline:
                raise LeaseTimeout(
                    f"{holder} waited {timeout:.0f}s for {count} free GPU(s) of {gpus} in {lock_dir}"
                )
            time.sleep(delay)
            delay = min(delay * 2, _MAX_POLL_S)


@contextlib.contextmanager
def lease(count: int, holder: str, timeout: float | None = None) -> Iterator[list[str]]:
    """Hold `count` disjoint devices for the duration of the block.

    All-or-nothing: only a request whose whole set is free and not held for an
    earlier one (`lease_queue`) locks anything, so two multi-GPU tests can never
    deadlock holding halves of what each needs. The locks are released on every
    path, a lease log that cannot be written included.
    """
    gpus = visible_gpus()
    if count > len(gpus):
        raise LeaseTimeout(f"{holder} needs {count} GPU(s); only {len(gpus)} are visible: {gpus}")
    timeout = lease_timeout() if timeout is None else timeout
    held = _acquire(count, holder, gpus, lease_dir(), timeout)
    devices = sorted(held, key=gpus.index)
    try:
        _log("acquire", devices, holder)
        yield devices
    finally:
        try:
            _log("release", devices, holder)
        finally:
            for fd in held.values():
                _unlock(fd)
