"""A pooled rank starts every test as a fresh rank would, for what a test can observe.

`Baseline` is taken once, when the rank has joined its group; after each test
the rank puts back what the test may have changed: torch's global modes and
flags, threads, cwd, `sys.path`, modules the test imported from the project,
process subgroups. What cannot be put back cheaply (inference mode left on, a
destroyed default group) is reported, and the pool replaces the rank. RNGs are
seeded before each test; the environment is mirrored from the pytest process.
"""

from __future__ import annotations

import faulthandler
import importlib.machinery
import os
import signal
import sys
import sysconfig
import threading
from typing import Any

import torch
import torch.distributed as dist
from torch.utils._python_dispatch import _pop_mode as _pop_dispatch_mode

from harness import seeding
from harness.ranks import switches

_LIBRARY_DIRS = tuple(
    {
        os.path.realpath(p) + os.sep
        for p in (*sysconfig.get_paths().values(), sys.prefix, sys.base_prefix, sys.exec_prefix)
    }
)


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


# Modules whose attributes tests monkeypatch; a replaced attribute is put back.
_PATCHED_MODULES = ("torch", "torch.nn.functional", "torch.distributed", "torch.autograd")
# torch's config modules load lazily: each is snapshot before the first test that starts with it
# loaded (what the test that imports one changes in the same test is not seen).
_CONFIG_MODULES = ("torch._dynamo.config", "torch._functorch.config", "torch._inductor.config")
_TIMERS = (signal.ITIMER_REAL, signal.ITIMER_VIRTUAL, signal.ITIMER_PROF)


def _flag_writes() -> Any:
    """torch's test utilities freeze torch.backends flags outside `flags()` blocks; this writes anyway."""
    return torch.backends.__allow_nonbracketed_mutation()


def _file_id(fd: int) -> tuple[int, int] | None:
    try:
        info = os.fstat(fd)
    except OSError:
        return None
    return info.st_dev, info.st_ino


class Baseline:
    """What this rank looked like before any test ran."""

    def __init__(self, dump_signal: signal.Signals) -> None:
        self.dump_signal = dump_signal
        self.switches = {**switches.torch_switches(), **switches.process_switches()}
        self.values = {name: read() for name, (read, _) in self.switches.items()}
        self.default_device = torch.get_default_device()
        self.cwd = os.getcwd()
        self.sys_path = list(sys.path)
        self.default_group = dist.distributed_c10d._get_default_group() if dist.is_initialized() else None
        self.signals = {sig: signal.getsignal(sig) for sig in signal.valid_signals() if sig != dump_signal}
        self.fds = {fd: (os.dup(fd), _file_id(fd)) for fd in (0, 1, 2)}
        self.attributes = {name: dict(vars(sys.modules[name])) for name in _PATCHED_MODULES}
        self.tensor_methods = dict(vars(torch.Tensor))
        self.configs: dict[str, dict[str, Any]] = {}
        self.threads = {t.ident for t in threading.enumerate()}

    def start_test(self, seed: int) -> set[str]:
        """Seed every RNG; returns the modules loaded now, the test's own imports included."""
        seeding.seed_all(seed)
        for name in _CONFIG_MODULES:
            if name in sys.modules and name not in self.configs:
                self.configs[name] = sys.modules[name].get_config_copy()
        self.threads = {t.ident for t in threading.enumerate()}
        return set(sys.modules)

    def restore(self, modules_before: set[str]) -> list[str]:
        """Put back what the test changed; returns what could not be, each with why."""
        unclean = []
        self._restore_modes()
        with _flag_writes():
            for name, (read, write) in self.switches.items():
                if read() != self.values[name]:
                    try:
                        write(self.values[name])
                    except (OSError, RuntimeError, ValueError) as error:
                        unclean.append(f"the test changed {name} and it cannot be put back: {error}")
        self._restore_process()
        self._restore_torch()
        if os.getcwd() != self.cwd:
            os.chdir(self.cwd)
        sys.path[:] = self.sys_path
        for name in set(sys.modules) - modules_before:
            if _user_module(sys.modules.get(name)):
                sys.modules.pop(name, None)
        unclean += self._left_running()
        if torch.is_inference_mode_enabled():
            unclean.append("the test left inference mode on")
        if dist.is_initialized() and self.default_group is None:
            dist.destroy_process_group()  # a fresh rank of a torch test class has no group
        elif dist.is_initialized():
            for group in list(dist.distributed_c10d._world.pg_map):
                if group is not self.default_group:
                    dist.destroy_process_group(group)
        return unclean

    def _restore_process(self) -> None:
        """Signal handlers, timers and the standard fds, as the rank had them."""
        for timer in _TIMERS:
            signal.setitimer(timer, 0)  # a pending alarm would kill the next test
        for sig, handler in self.signals.items():
            if handler is not None and signal.getsignal(sig) is not handler:
                signal.signal(sig, handler)
        if signal.getsignal(self.dump_signal) not in (None, signal.SIG_DFL):
            signal.signal(self.dump_signal, signal.SIG_DFL)
        faulthandler.register(self.dump_signal, file=sys.stderr, all_threads=True, chain=False)
        for fd, (saved, identity) in self.fds.items():
            if _file_id(fd) != identity:
                os.dup2(saved, fd)

    def _restore_modes(self) -> None:
        """The default device, then every dispatch and function mode left on (none in a fresh rank);
        first, since a mode left on intercepts the reads of every other switch."""
        with torch._C.DisableTorchFunction():
            device = torch.get_default_device()
        if device != self.default_device:
            torch.set_default_device(self.default_device)
        while torch._C._len_torch_dispatch_stack():
            _pop_dispatch_mode()
        while torch._C._len_torch_function_stack():
            torch._C._pop_torch_function_stack()

    def _restore_torch(self) -> None:
        """Hooks, patched attributes and configs a fresh rank would not have."""
        while torch._C._autograd._top_saved_tensors_default_hooks(False) is not None:
            torch._C._autograd._pop_saved_tensors_default_hooks()
        torch.set_flush_denormal(False)  # no getter; off in a fresh process
        for name, saved in self.attributes.items():
            _put_back(sys.modules[name], saved)
        _put_back(torch.Tensor, self.tensor_methods)
        for name, saved in self.configs.items():
            config = sys.modules[name]
            if config.get_config_copy() != saved:
                config.load_config(saved)

    def _left_running(self) -> list[str]:
        """Python threads the test started that are still running: they cannot be stopped from outside."""
        return [
            f"the test left thread {t.name!r} running"
            for t in threading.enumerate()
            if t.ident not in self.threads and t.is_alive()
        ]

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


def _put_back(owner: Any, saved: dict[str, Any]) -> None:
    """Attributes a test replaced on a module or class; names it added stay (lazy imports add some)."""
    now = vars(owner)
    for name, value in saved.items():
        if now.get(name, saved) is not value:
            setattr(owner, name, value)
