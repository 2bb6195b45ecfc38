"""The rank process: die with pytest, log to a file, init the group, run calls.

A rank must never outlive the pytest process that owns it, whatever kills
that process (Ctrl-C, SIGTERM, SIGKILL of an xdist worker). Three layers:
the kernel's parent-death signal, a thread that waits on a pidfd of the
owning pytest process (the direct parent may be the forkserver), and the
pool's own clean-up. Each rank leads its own process group, so terminal
Ctrl-C reaches pytest, not the ranks; what a test starts ends with the test
(`children`), and what it changes is put back (`state`).
"""

from __future__ import annotations

import ctypes
import faulthandler
import os
import select
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection

import pytest

from harness import safe_paths, tiers
from harness.ranks import calls, children, rendezvous, state, torch_call
from harness.ranks.results import RankReport

DUMP_SIGNAL = signal.SIGUSR1
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class RankSpec:
    rank: int
    world_size: int
    backend: str
    env: dict[str, str]
    log_path: str
    owner_pid: int
    group_timeout_s: float
    deterministic: bool
    init_group: bool = True


def _kill_own_group() -> None:
    os.killpg(0, signal.SIGKILL)


def _watch_owner(owner_pid: int) -> None:
    try:
        fd = os.pidfd_open(owner_pid)
    except ProcessLookupError:
        _kill_own_group()
    except OSError:  # kernel without pidfd: poll
        while True:
            try:
                os.kill(owner_pid, 0)
            except ProcessLookupError:
                _kill_own_group()
            time.sleep(0.5)
    select.select([fd], [], [])
    _kill_own_group()


def _tie_to_owner(owner_pid: int) -> None:
    os.setpgid(0, 0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    threading.Thread(target=_watch_owner, args=(owner_pid,), name="harness-owner-watch", daemon=True).start()


def _log_to(path: str) -> None:
    """Send fds 1 and 2 to the rank's log; the pool slices it per test and reads stack dumps from it."""
    fd = safe_paths.open_new(path)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(line_buffering=True)
    faulthandler.enable(file=sys.stderr, all_threads=True)
    faulthandler.register(DUMP_SIGNAL, file=sys.stderr, all_threads=True, chain=False)


def _flush() -> None:
    sys.stdout.flush()
    sys.stderr.flush()


def _mirror_environ(caller: dict[str, str], own: dict[str, str]) -> None:
    """The test sees the pytest process's environment as of this call (fixtures may have set
    variables), with this rank's torchrun variables on top."""
    wanted = {**caller, **own}
    for name in set(os.environ) - set(wanted):
        del os.environ[name]
    os.environ.update(wanted)


def _run_test(call: calls.Call, rank: int, baseline: state.Baseline) -> tuple[RankReport, set[str]]:
    """A pytest test function; returns its report and the modules loaded before its body ran."""
    kwargs = {}
    modules = set(sys.modules)
    try:
        test, kwargs = calls.resolve(call)
    except Exception as error:
        report = calls.failure(call, rank, error)
    else:
        modules = baseline.start_test(call.seed)
        report = calls.execute(call, test, kwargs, rank)
    for value in kwargs.values():
        if isinstance(value, pytest.MonkeyPatch):
            value.undo()
    return report, modules


def _run_torch_test(
    call: torch_call.TorchCall | torch_call.ContinuousCall,
    rank: int,
    baseline: state.Baseline,
    conn: Connection,
) -> tuple[RankReport, set[str]]:
    """A test of torch's MultiProcessTestCase family through the class's own rank entry point,
    or a whole MultiProcContinuousTest class through its worker loop."""
    modules = set(sys.modules)
    try:
        cls = torch_call.resolve(call)
        skip_codes = torch_call.skip_codes()
    except Exception:
        return torch_call.failure(rank), modules
    modules = baseline.start_test(call.seed)
    if isinstance(call, torch_call.ContinuousCall):
        return torch_call.execute_continuous(call, cls, rank, conn), modules
    return torch_call.execute(call, cls, rank, skip_codes), modules


AnyCall = calls.Call | torch_call.TorchCall | torch_call.ContinuousCall


def _run(call: AnyCall, rank: int, baseline: state.Baseline, conn: Connection) -> RankReport:
    """One test (or continuous class) in this rank, then everything it changed or started put back or ended."""
    if isinstance(call, calls.Call):
        report, modules = _run_test(call, rank, baseline)
    else:
        report, modules = _run_torch_test(call, rank, baseline, conn)
    report.unclean = baseline.restore(modules)
    report.ended = children.end_descendants()
    report.collectives = baseline.collectives()
    report.group_alive = baseline.group_kept()
    return report


def main(spec: RankSpec, conn: Connection) -> None:
    """Entry point of a rank: start, then run calls until told to stop or orphaned."""
    _tie_to_owner(spec.owner_pid)
    children.become_subreaper()
    _log_to(spec.log_path)
    os.environ.update(spec.env)
    try:
        if spec.init_group:
            rendezvous.init_default_group(spec.backend, spec.group_timeout_s)
        if spec.deterministic:
            tiers.set_deterministic(True)
        baseline = state.Baseline(DUMP_SIGNAL)
    except Exception:
        _flush()
        conn.send(("start_failed", traceback.format_exc()))
        return
    conn.send(("ready", os.getpid()))
    while True:
        try:
            message = conn.recv()
        except EOFError:
            break
        if message[0] == "exit":
            break
        if message[0] == torch_call.TASK:  # for a continuous class whose loop had already ended
            continue
        _mirror_environ(message[1].environ, spec.env)
        report = _run(message[1], spec.rank, baseline, conn)
        _flush()
        conn.send(("report", report))
    _flush()
    os._exit(0)
