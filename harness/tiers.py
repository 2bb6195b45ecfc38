"""The three places a test body runs, and whether this machine can run each.

This is the single source of truth for tiers: the pytest plugin, the CI
matrix and the docs all read it.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness import devices


@dataclass(frozen=True)
class Tier:
    name: str
    device_type: str
    backend: str
    min_gpus: int
    make_target: str
    summary: str


TIERS: dict[str, Tier] = {
    tier.name: tier
    for tier in (
        Tier("cpu", "cpu", "gloo", 0, "test-cpu", "flops, MemTracker memory, bitwise grads, gloo ranks"),
        Tier("gpu", "cuda", "nccl", 1, "test-gpu", "one CUDA device: CUDA memory statistics, grads"),
        Tier("multigpu", "cuda", "nccl", 2, "test-gpu", "N CUDA devices, NCCL: FSDP2 + AC"),
    )
}

# A plain test runs here; a test marked world_size(N) runs in MULTI_RANK_TIERS.
DEFAULT_TIERS = ("cpu", "gpu")
MULTI_RANK_TIERS = ("cpu", "multigpu")


def parse_tier_list(text: str) -> list[str]:
    """ "cpu,gpu" -> ["cpu", "gpu"], rejecting unknown names."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [n for n in names if n not in TIERS]
    if unknown or not names:
        raise ValueError(f"unknown tier {unknown or text!r}; choose from {list(TIERS)}")
    return names


def unsupported_reason(name: str) -> str | None:
    """Why this machine cannot run tier `name`, or None when it can."""
    tier = TIERS[name]
    if tier.min_gpus == 0:
        return None
    count = devices.gpu_count()
    if count < tier.min_gpus:
        found = "no CUDA device" if count == 0 else f"only {count} GPU(s)"
        return f"tier {name!r} needs at least {tier.min_gpus} GPU(s); this machine has {found}"
    return None


def backend_for(name: str) -> str:
    """Process-group backend: fake GPUs run on CPU, so they use gloo."""
    return "gloo" if devices.fake_gpu_count() else TIERS[name].backend


def device_type_for(name: str) -> str:
    return "cpu" if devices.fake_gpu_count() else TIERS[name].device_type
