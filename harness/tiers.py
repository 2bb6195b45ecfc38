"""Every tier rule, in one place: the tiers, which tiers a test gets, how many
GPUs it needs and leases, what `make test-gpu` asks for, and the determinism a
GPU tier runs under.

The pytest plugin, the rank runner, the CI matrix and the docs read this
module; a new tier is one more `Tier` entry.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

from harness import devices, gpu_hygiene, markers

if TYPE_CHECKING:
    from harness.env import TierEnv


@dataclass(frozen=True)
class Tier:
    name: str
    device_type: str
    backend: str
    min_gpus: int
    make_target: str
    summary: str
    plain: bool  # runs tests that use the `tier` fixture without a world_size marker
    multi_rank: bool  # runs @pytest.mark.world_size tests
    deterministic: bool  # torch.use_deterministic_algorithms(True), cuBLAS workspace pinned


TIERS: dict[str, Tier] = {
    tier.name: tier
    for tier in (
        Tier(
            "cpu",
            "cpu",
            "gloo",
            0,
            "test-cpu",
            "flops, MemTracker memory, bitwise grads, gloo ranks",
            plain=True,
            multi_rank=True,
            deterministic=False,
        ),
        Tier(
            "gpu",
            "cuda",
            "nccl",
            1,
            "test-gpu",
            "one CUDA device: CUDA memory statistics, bitwise grads",
            plain=True,
            multi_rank=False,
            deterministic=True,
        ),
        Tier(
            "multigpu",
            "cuda",
            "nccl",
            2,
            "test-gpu",
            "N CUDA devices, NCCL: FSDP2 + AC",
            plain=False,
            multi_rank=True,
            deterministic=True,
        ),
    )
}

# cuBLAS picks reduction strategies per workspace; a fixed workspace makes its
# matmuls reproducible. It must be in the environment before CUDA starts.
# TORCHINDUCTOR_DETERMINISTIC is what torch.use_deterministic_algorithms sets in
# inductor's config; as a variable it holds without importing inductor (2 s).
DETERMINISTIC_ENV = {"CUBLAS_WORKSPACE_CONFIG": ":4096:8", "TORCHINDUCTOR_DETERMINISTIC": "1"}
# What a world_size test leases per rank in a multi-GPU tier when nothing says otherwise.
DEFAULT_WORLD_SIZE = 2

# The parameter that carries a test's tier (indirect, so the `tier` fixture sees it).
TIER_PARAM = "_harness_tier"

LEASE_KEY = pytest.StashKey[tuple[str, ...]]()  # held now
LAST_LEASE_KEY = pytest.StashKey[tuple[str, ...]]()  # held last, for the repro line


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


def gpu_test_tiers() -> list[str]:
    """What `make test-gpu` requests: the GPU tiers this host can run, or the first
    GPU tier when it can run none, so the run fails loudly instead of passing empty."""
    gpu_tiers = [t.name for t in TIERS.values() if t.make_target == "test-gpu"]
    return [name for name in gpu_tiers if not unsupported_reason(name)] or gpu_tiers[:1]


def backend_for(name: str) -> str:
    """Process-group backend: fake GPUs run on CPU, so they use gloo."""
    return "gloo" if devices.fake_gpu_count() else TIERS[name].backend


def device_type_for(name: str) -> str:
    return "cpu" if devices.fake_gpu_count() else TIERS[name].device_type


def tiers_for(node: pytest.Item, multi_rank: bool) -> tuple[str, ...]:
    """The tiers a test runs in: its `tiers` marker, else every tier of its kind."""
    marker = node.get_closest_marker("tiers")
    if marker is not None:
        return markers.tier_names(marker, node.nodeid, list(TIERS))
    return tuple(t.name for t in TIERS.values() if (t.multi_rank if multi_rank else t.plain))


# pytest cannot parametrize unittest methods (torch's multi-process test classes): the
# plugin hosting them puts in the item's stash the tier it runs in this run, every tier
# it may run in (what the CI inventory lists) and its world size.
STASHED_TIER = pytest.StashKey[str]()
STASHED_TIERS = pytest.StashKey[tuple[str, ...]]()
STASHED_WORLD_SIZE = pytest.StashKey[int]()


def _param(item: pytest.Item, name: str) -> Any:
    callspec = getattr(item, "callspec", None)
    return None if callspec is None else callspec.params.get(name)


def tier_name(item: pytest.Item) -> str | None:
    name = _param(item, TIER_PARAM)
    return name if name is not None else item.stash.get(STASHED_TIER, None)


def listed_tiers(item: pytest.Item) -> tuple[str, ...]:
    """Every tier the item runs in across runs: its own tier, or all an unparametrized test may take."""
    name = tier_name(item)
    return item.stash.get(STASHED_TIERS, None) or ((name,) if name is not None else ())


def world_size_of(item: pytest.Item) -> int | None:
    size = _param(item, "world_size")
    return size if size is not None else item.stash.get(STASHED_WORLD_SIZE, None)


def max_gpus() -> int:
    """The most GPUs a test may ask for: what the largest host gives, or this one if larger."""
    return max(devices.MAX_HOST_GPUS, devices.gpu_count())


def gpus_needed(item: pytest.Item, name: str) -> int:
    """Devices a test holds in tier `name`: its `gpus` marker, else one per rank, else one."""
    if TIERS[name].min_gpus == 0:
        return 0
    marker = item.get_closest_marker("gpus")
    if marker is not None:
        return int(marker.args[0])
    if TIERS[name].multi_rank:
        return world_size_of(item) or DEFAULT_WORLD_SIZE
    return 1


def unrunnable_reason(item: pytest.Item, name: str) -> str | None:
    """Why this host cannot run this test in tier `name` although it runs the tier."""
    need = gpus_needed(item, name)
    have = devices.gpu_count()
    if TIERS[name].min_gpus and have >= TIERS[name].min_gpus and need > have:
        return f"needs {need} GPUs; {have} here"
    return None


@contextlib.contextmanager
def lease(item: pytest.Item, name: str) -> Iterator[tuple[str, ...]]:
    """The devices `item` holds in tier `name` for the duration of the block.

    One lease per test: the `tier` fixture takes it and the rank runner reuses it,
    since a second lock on the same device from one process would wait forever.
    """
    held = item.stash.get(LEASE_KEY, None)
    if held is not None or TIERS[name].min_gpus == 0:
        yield held or ()
        return
    with devices.lease(gpus_needed(item, name), holder=item.nodeid) as leased:
        gpu_hygiene.wait_until_clean(tuple(leased), item.nodeid)
        item.stash[LEASE_KEY] = item.stash[LAST_LEASE_KEY] = tuple(leased)
        try:
            yield tuple(leased)
        finally:
            del item.stash[LEASE_KEY]


def startup_env(name: str) -> dict[str, str]:
    """Variables a process running tier `name` needs before CUDA starts."""
    return dict(DETERMINISTIC_ENV) if TIERS[name].deterministic else {}


def set_deterministic(mode: bool, warn_only: bool = False) -> None:
    """torch.use_deterministic_algorithms, without importing inductor to set its flag:
    set it when inductor is loaded; otherwise TORCHINDUCTOR_DETERMINISTIC decides."""
    import torch

    torch._C._set_deterministic_algorithms(mode, warn_only=warn_only)
    inductor_config = sys.modules.get("torch._inductor.config")
    if inductor_config is not None:
        inductor_config.deterministic = mode


@contextlib.contextmanager
def deterministic_algorithms() -> Iterator[None]:
    """Deterministic algorithms and `DETERMINISTIC_ENV` for the block, then everything put
    back: the one switch the GPU tiers and the AC report's CUDA comparisons share."""
    import torch

    saved_env = {key: os.environ.get(key) for key in DETERMINISTIC_ENV}
    saved_mode = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    try:
        os.environ.update(DETERMINISTIC_ENV)
        set_deterministic(True)
        yield
    finally:
        set_deterministic(*saved_mode)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def determinism(name: str) -> contextlib.AbstractContextManager[None]:
    """A test body under its tier's determinism, so neither cpu-tier tests nor
    unrelated code see it."""
    return deterministic_algorithms() if TIERS[name].deterministic else contextlib.nullcontext()


def tier_env(name: str, gpu_ids: tuple[str, ...] = ()) -> TierEnv:
    """What the `tier` fixture hands a test body (imports torch)."""
    from harness.env import TierEnv

    return TierEnv(name, device_type_for(name), backend_for(name), gpu_ids, TIERS[name].deterministic)
