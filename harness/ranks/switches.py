"""Process-wide switches a test may flip, each as a (read, write) pair, for `state.Baseline`.

Read once when the rank is fresh and again after every test; a value that differs is
written back. Every read is cheap (no import, no allocation worth counting): a warm
pool pays for all of them on every test.
"""

from __future__ import annotations

import faulthandler
import gc
import logging
import os
import resource
import sys
import threading
from collections.abc import Callable
from typing import Any

import torch

from harness import tiers

Switch = tuple[Callable[[], Any], Callable[[Any], None]]


def _attribute(owner: Any, name: str) -> Switch:
    return (lambda: getattr(owner, name), lambda value: setattr(owner, name, value))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _autocast(device: str) -> Switch:
    return (
        lambda: (
            torch.is_autocast_enabled(device),
            torch.get_autocast_dtype(device),
            torch.is_autocast_cache_enabled(),
        ),
        lambda value: (
            torch.set_autocast_enabled(device, value[0]),
            torch.set_autocast_dtype(device, value[1]),
            torch.set_autocast_cache_enabled(value[2]),
        ),
    )


def _print_options() -> Switch:
    options = torch._tensor_str.PRINT_OPTS
    return (lambda: dict(vars(options)), lambda value: (vars(options).clear(), vars(options).update(value)))


def _logger_levels() -> dict[str, int]:
    return {
        name: logger.level
        for name, logger in list(logging.root.manager.loggerDict.items())
        if isinstance(logger, logging.Logger)
    }


def _set_logger_levels(levels: dict[str, int]) -> None:
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def torch_switches() -> dict[str, Switch]:
    """torch's global modes and flags, by the name a report gives them."""
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
        "autograd multithreading": (
            torch.autograd.is_multithreading_enabled,
            torch._C._set_multithreading_enabled,
        ),
        "cpu autocast": _autocast("cpu"),
        "cuda autocast": _autocast("cuda"),
        "print options": _print_options(),
        "cudnn.enabled": _attribute(backends.cudnn, "enabled"),
        "cudnn.allow_tf32": _attribute(backends.cudnn, "allow_tf32"),
        "cudnn.deterministic": _attribute(backends.cudnn, "deterministic"),
        "cudnn.benchmark": _attribute(backends.cudnn, "benchmark"),
        "mkldnn.enabled": _attribute(backends.mkldnn, "enabled"),
        "cuda.matmul.allow_tf32": _attribute(backends.cuda.matmul, "allow_tf32"),
        "cuda.matmul.allow_fp16_reduced_precision_reduction": _attribute(
            backends.cuda.matmul, "allow_fp16_reduced_precision_reduction"
        ),
        "cuda.matmul.allow_bf16_reduced_precision_reduction": _attribute(
            backends.cuda.matmul, "allow_bf16_reduced_precision_reduction"
        ),
    }


def process_switches() -> dict[str, Switch]:
    """The interpreter's and the process's own settings, by the name a report gives them."""
    root = logging.getLogger()
    return {
        "umask": (_umask, os.umask),
        "recursion limit": (sys.getrecursionlimit, sys.setrecursionlimit),
        "switch interval": (sys.getswitchinterval, sys.setswitchinterval),
        "gc enabled": (gc.isenabled, lambda on: gc.enable() if on else gc.disable()),
        "gc thresholds": (gc.get_threshold, lambda value: gc.set_threshold(*value)),
        "sys.setprofile": (sys.getprofile, sys.setprofile),
        "sys.settrace": (sys.gettrace, sys.settrace),
        "threading.setprofile": (lambda: threading._profile_hook, threading.setprofile),
        "threading.settrace": (lambda: threading._trace_hook, threading.settrace),
        "sys.excepthook": _attribute(sys, "excepthook"),
        "sys.unraisablehook": _attribute(sys, "unraisablehook"),
        "threading.excepthook": _attribute(threading, "excepthook"),
        "sys.stdout": _attribute(sys, "stdout"),
        "sys.stderr": _attribute(sys, "stderr"),
        "sys.stdin": _attribute(sys, "stdin"),
        "logging level": (lambda: root.level, root.setLevel),
        "logging handlers": (lambda: list(root.handlers), lambda value: setattr(root, "handlers", value)),
        "logging.disable": (lambda: root.manager.disable, logging.disable),
        "logger levels": (_logger_levels, _set_logger_levels),
        "faulthandler": (
            faulthandler.is_enabled,
            lambda on: faulthandler.enable(sys.stderr, all_threads=True) if on else faulthandler.disable(),
        ),
        "open files limit": (
            lambda: resource.getrlimit(resource.RLIMIT_NOFILE),
            lambda value: resource.setrlimit(resource.RLIMIT_NOFILE, value),
        ),
    }
