"""The one line that reruns a failed test exactly: its id in its tier, the seed, the
devices it held and the environment that shapes it, with the versions it ran on."""

from __future__ import annotations

import os
import platform
import shlex

import pytest

from harness import devices, gpu_hygiene, tiers

# Variables that change what a test computes or where it runs.
CARRIED_PREFIXES = ("HARNESS_", "NCCL_", "TORCH_", "TORCHINDUCTOR_", "CUBLAS_", "CUDA_LAUNCH_BLOCKING")
CARRIED_NAMES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "PYTHONHASHSEED")
# The harness's own bookkeeping, set afresh by every run.
_INTERNAL = (
    devices.PHYSICAL_GPUS_ENV,
    devices.HOME_GPU_ENV,
    devices.LEASE_LOG_ENV,
    devices.LEASE_DIR_ENV,
    gpu_hygiene.RUN_PID_ENV,
    "TORCH_PIP_ARGS",
)


def versions() -> str:
    """torch, CUDA and NCCL as this process sees them (without starting CUDA)."""
    import torch

    cuda = torch.version.cuda or "none"
    nccl = "none"
    if torch.cuda.is_available() and torch.distributed.is_nccl_available():
        nccl = ".".join(map(str, torch.cuda.nccl.version()))
    return f"torch {torch.__version__}, CUDA {cuda}, NCCL {nccl}, Python {platform.python_version()}"


def rerun_env(tier: str | None, leased: tuple[str, ...]) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if (name.startswith(CARRIED_PREFIXES) or name in CARRIED_NAMES) and name not in _INTERNAL
    }
    env.pop("CUBLAS_WORKSPACE_CONFIG", None)  # the tier sets it
    if tier is not None and tiers.TIERS[tier].min_gpus and leased and not devices.fake_gpu_count():
        env["CUDA_VISIBLE_DEVICES"] = ",".join(leased)
    return env


def line(
    item: pytest.Item, tier: str | None, seed: int, dist_timeout_s: float, default_timeout_s: float
) -> str:
    """`ENV=... python -m pytest '<id>' --tier T --harness-seed S  # versions`."""
    leased = item.stash.get(tiers.LAST_LEASE_KEY, ())
    env = " ".join(f"{name}={shlex.quote(value)}" for name, value in sorted(rerun_env(tier, leased).items()))
    args = ["python", "-m", "pytest", item.nodeid]
    if tier is not None:
        args += ["--tier", tier]
    args += ["--harness-seed", str(seed)]
    if dist_timeout_s != default_timeout_s:
        args += ["--dist-timeout", f"{dist_timeout_s:g}"]
    command = " ".join(shlex.quote(arg) for arg in args)
    return f"{env + ' ' if env else ''}{command}  # {versions()}"
