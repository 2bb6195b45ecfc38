"""A pooled rank starts every test as a fresh rank would, for what a test can observe.

`Baseline` is taken once, when the rank has joined its group; after each test
the rank puts back what the test may have changed: torch's global modes and
flags, threads, cwd, `sys.path`, modules the test imported from the project,
process subgroups. What cannot be put back cheaply (inference mode left on, a
destroyed default group) is reported, and the pool replaces the rank. RNGs are
seeded before each test; the environment is mirrored from the pytest process.
"""

from __future__ import annotations

import importlib.machinery
import os
import sys
import sysconfig
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from harness import seeding, tiers

_LIBRARY_DIRS = tuple(
    {
        os.path.realpath(p) + os.sep
        for p in (*sysconfig.get_paths().values(), sys.prefix, sys.base_prefix, sys.exec_prefix)
    }
)


def _flags() -> dict[str, tuple[Callable[[], Any], Callable[[Any], None]]]:
    """torch's process-wide switches a test may flip, as (read, write) pairs."""
    backends = torch.backends
    return {
        "default dtype": (torch.get_default_dtype, torch.set_default_dtype),
        "grad mode": (torch.is_grad_enabled, torch.set_grad_enabled),
        "deterministic algorithms": (
            lambda: (
                torch.are_deterministic_algorithms_enabled(),
                torch.is_deterministic_algorithms_warn_only_enabled(),
            ),
            lambda value: tiers.set_deterministic(*value),
        ),
        "anomaly mode": (torch.is_anomaly_enabled, torch.set_anomaly_enabled),
        "float32 matmul precision": (torch.get_float32_matmul_precision, torch.set_float32_matmul_precision),
        "intra-op threads": (torch.get_num_threads, torch.set_num_threads),
        "cudnn.deterministic": (
            lambda: backends.cudnn.deterministic,
            lambda value: setattr(backends.cudnn, "deterministic", value),
        ),
        "cudnn.benchmark": (
            lambda: backends.cudnn.benchmark,
            lambda value: setattr(backends.cudnn, "benchmark", value),
        ),
        "cuda.matmul.allow_tf32": (
            lambda: backends.cuda.matmul.allow_tf32,
            lambda value: setattr(backends.cuda.matmul, "allow_tf32", value),
        ),
    }


def _user_module(module: object) -> bool:
    """A module a test imported from its own project (or put into sys.modules by hand).

    Library modules stay: torch's registries and extension modules cannot be imported twice.
    """
    spec = getattr(module, "__spec__", None)
    if spec is not None and spec.origin in ("built-in", "frozen"):
        return False
    path = getattr(module, "__file__", None)
    if path is None:
        return spec is None or (spec.origin is None and not getattr(module, "__path__", None))
    if path.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)):
        return False
    return not os.path.realpath(path).startswith(_LIBRARY_DIRS)


class Baseline:
    """What this rank looked like before any test ran."""

    def __init__(self) -> None:
        self.flags = _flags()
        self.values = {name: read() for name, (read, _) in self.flags.items()}
        self.cwd = os.getcwd()
        self.sys_path = list(sys.path)
        self.default_group = dist.distributed_c10d._get_default_group() if dist.is_initialized() else None

    def start_test(self, seed: int) -> set[str]:
        """Seed every RNG; returns the modules loaded now, the test's own imports included."""
        seeding.seed_all(seed)
        return set(sys.modules)

    def restore(self, modules_before: set[str]) -> list[str]:
        """Put back what the test changed; returns what could not be, each with why."""
        for name, (read, write) in self.flags.items():
            if read() != self.values[name]:
                write(self.values[name])
        if os.getcwd() != self.cwd:
            os.chdir(self.cwd)
        sys.path[:] = self.sys_path
        for name in set(sys.modules) - modules_before:
            if _user_module(sys.modules.get(name)):
                sys.modules.pop(name, None)
        unclean = []
        if torch.is_inference_mode_enabled():
            unclean.append("the test left inference mode on")
        if dist.is_initialized() and self.default_group is None:
            dist.destroy_process_group()  # a fresh rank of a torch test class has no group
        elif dist.is_initialized():
            for group in list(dist.distributed_c10d._world.pg_map):
                if group is not self.default_group:
                    dist.destroy_process_group(group)
        return unclean

    def group_kept(self) -> bool:
        """Whether the rank's default process group is as it started: there, or never made."""
        return dist.is_initialized() or self.default_group is None

    def collectives(self) -> int | None:
        """The default group's sequence number: ranks that differ left a collective unmatched."""
        if not dist.is_initialized():
            return None
        try:
            return self.default_group._get_sequence_number_for_group()
        except (AttributeError, RuntimeError):
            return None
