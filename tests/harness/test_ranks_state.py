"""Every kind of process state a pooled test can set is fresh in the next test on the same ranks:
one inner run sets each kind in one test and reads it in the next, same world size, no `isolated`."""

from __future__ import annotations

import pytest

# A self-test fails within 60 s when what it checks hangs, not at the suite-wide 600 s.
pytestmark = [pytest.mark.tiers("cpu"), pytest.mark.timeout(60)]

KINDS = """
import faulthandler, gc, io, logging, os, resource, signal, sys, threading, time
import pytest
import torch
import torch._functorch.config as functorch_config
import torch.distributed as dist
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

PIDS = {pids!r}
DENORMAL = 1e-310


def dump_signal_registered():
    registered = faulthandler.unregister(signal.SIGUSR1)
    if registered:
        faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True, chain=False)
    return registered


def redirect_fd_1():
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.close(null)


def patch_torch():
    torch.add = lambda *args, **kwargs: "patched"


def start_thread():
    threading.Thread(target=time.sleep, args=(2,), name="left-behind", daemon=True).start()


def umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def lower_open_files():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft // 2, hard))


# kind: (what a test can observe, how a test changes it)
KINDS = {{
    "cudnn.enabled": (lambda: torch.backends.cudnn.enabled, lambda: setattr(torch.backends.cudnn, "enabled", False)),
    "cudnn.allow_tf32": (
        lambda: torch.backends.cudnn.allow_tf32, lambda: setattr(torch.backends.cudnn, "allow_tf32", False)
    ),
    "mkldnn": (lambda: torch.backends.mkldnn.enabled, lambda: setattr(torch.backends.mkldnn, "enabled", False)),
    "fp16 reduced precision": (
        lambda: torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction,
        lambda: setattr(torch.backends.cuda.matmul, "allow_fp16_reduced_precision_reduction", False),
    ),
    "autocast": (lambda: torch.is_autocast_enabled("cpu"), lambda: torch.set_autocast_enabled("cpu", True)),
    "print options": (lambda: str(torch.tensor([1 / 3])), lambda: torch.set_printoptions(precision=1)),
    "functorch config": (
        lambda: functorch_config.debug_assert, lambda: setattr(functorch_config, "debug_assert", True)
    ),
    "autograd multithreading": (
        torch.autograd.is_multithreading_enabled, lambda: torch.autograd.set_multithreading_enabled(False).__enter__()
    ),
    "saved-tensor hooks": (
        lambda: torch._C._autograd._top_saved_tensors_default_hooks(False) is not None,
        lambda: torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t).__enter__(),
    ),
    "flush denormal": (
        lambda: (torch.tensor([DENORMAL], dtype=torch.float64) * 1.0).item(), lambda: torch.set_flush_denormal(True)
    ),
    "dispatch mode": (torch._C._len_torch_dispatch_stack, lambda: TorchDispatchMode().__enter__()),
    "function mode": (torch._C._len_torch_function_stack, lambda: TorchFunctionMode().__enter__()),
    "default device": (lambda: str(torch.empty(1).device), lambda: torch.set_default_device("meta")),
    "library monkeypatch": (lambda: torch.add is torch._C._VariableFunctions.add, patch_torch),
    "logging level": (lambda: logging.getLogger().level, lambda: logging.getLogger().setLevel(logging.CRITICAL)),
    "logging handlers": (
        lambda: len(logging.getLogger().handlers), lambda: logging.getLogger().addHandler(logging.NullHandler())
    ),
    "logging.disable": (lambda: logging.root.manager.disable, lambda: logging.disable(logging.ERROR)),
    "signal handler": (
        lambda: signal.getsignal(signal.SIGUSR2), lambda: signal.signal(signal.SIGUSR2, lambda *args: None)
    ),
    "pending alarm": (lambda: signal.getitimer(signal.ITIMER_REAL)[0] > 0, lambda: signal.alarm(30)),
    "stack dump signal": (dump_signal_registered, lambda: faulthandler.unregister(signal.SIGUSR1)),
    "threads": (
        lambda: [t.name for t in threading.enumerate() if t.name == "left-behind"], start_thread
    ),
    "sys.stdout": (lambda: sys.stdout is sys.__stdout__, lambda: setattr(sys, "stdout", io.StringIO())),
    "fd 1": (lambda: os.fstat(1).st_ino == os.fstat(2).st_ino, redirect_fd_1),
    "umask": (umask, lambda: os.umask(0o077)),
    "recursion limit": (sys.getrecursionlimit, lambda: sys.setrecursionlimit(123)),
    "switch interval": (sys.getswitchinterval, lambda: sys.setswitchinterval(0.5)),
    "gc": (gc.isenabled, gc.disable),
    "setprofile": (sys.getprofile, lambda: sys.setprofile(lambda *args: None)),
    "faulthandler": (faulthandler.is_enabled, faulthandler.disable),
    "excepthook": (lambda: id(sys.excepthook), lambda: setattr(sys, "excepthook", print)),
    "open files limit": (lambda: resource.getrlimit(resource.RLIMIT_NOFILE), lower_open_files),
}}


def record(kind, value):
    with open(os.path.join(PIDS, f"{{kind}}-{{dist.get_rank()}}"), "w") as f:
        f.write(repr(value))


def recorded(kind):
    with open(os.path.join(PIDS, f"{{kind}}-{{dist.get_rank()}}")) as f:
        return f.read()


# Each kind is set, then checked in the very next test: a pool replaced for one kind
# (a thread left running) must not hand the others a fresh rank.
@pytest.mark.world_size(2)
@pytest.mark.parametrize("kind, step", [(kind, step) for kind in KINDS for step in ("set", "fresh")])
def test_state(kind, step):
    read, change = KINDS[kind]
    if step == "set":
        record(kind, read())
        change()
        assert repr(read()) != recorded(kind), "the change did not take"
    else:
        assert repr(read()) == recorded(kind)
"""


def test_each_kind_of_state_a_test_sets_is_fresh_in_the_next(pytester, tmp_path):
    pids = tmp_path / "values"
    pids.mkdir()
    pytester.makepyfile(test_state=KINDS.format(pids=str(pids)))
    result = pytester.runpytest("--tier", "cpu", "-p", "no:cacheprovider", "--dist-timeout", "30")
    out = result.stdout.str()
    assert result.ret == 0, out
    assert "left thread 'left-behind' running" in out, "a thread that cannot be stopped replaces the pool"
