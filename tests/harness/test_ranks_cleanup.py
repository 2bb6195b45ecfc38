"""No rank outlives its pytest process, however that process ends."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from harness.ranks import logs

# A self-test fails within 60 s when what it checks hangs, not at the suite-wide 600 s.
pytestmark = [pytest.mark.tiers("cpu"), pytest.mark.timeout(60)]

HANGING = """
import os, time
import pytest
import torch.distributed as dist

@pytest.mark.world_size(2)
def test_records_and_hangs():
    with open(os.path.join({pids!r}, f"rank-{{dist.get_rank()}}"), "w") as f:
        f.write(str(os.getpid()))
    time.sleep(600)
"""

WORKER_CRASH = """
import os, signal
import pytest
import torch.distributed as dist

@pytest.mark.world_size(2)
def test_a_records():
    with open(os.path.join({pids!r}, f"rank-{{dist.get_rank()}}"), "w") as f:
        f.write(str(os.getpid()))

def test_b_kills_its_xdist_worker():
    os.kill(os.getpid(), signal.SIGKILL)

@pytest.mark.world_size(2)
def test_c_runs_on_the_next_worker():
    dist.barrier()
"""


def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def descendants(root: int) -> set[int]:
    """Every process below `root`, found by scanning /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (parent := _ppid(int(entry))) is not None:
            children.setdefault(parent, []).append(int(entry))
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    """Running and not a zombie (an unreaped zombie holds no resources)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def _recorded(pids: Path) -> set[int]:
    return {int(p.read_text()) for p in pids.iterdir() if p.read_text()}


def _default_sigint() -> None:
    """A shell's background job starts with SIGINT ignored, and children inherit that: Ctrl-C
    must reach the inner pytest as it would from a terminal, whoever started this run."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _pytest(pytester: pytest.Pytester, *args: str, **popen) -> subprocess.Popen:
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--tier", "cpu", *args]
    return subprocess.Popen(
        command,
        cwd=pytester.path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=_default_sigint,
        **popen,
    )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_signalled_pytest_leaves_no_rank(pytester, tmp_path, monkeypatch, sig):
    pids = tmp_path / "pids"
    pids.mkdir()
    pytester.makepyfile(test_hangs=HANGING.format(pids=str(pids)))
    proc = _pytest(pytester, "--dist-timeout", "300", env={**os.environ, "TMPDIR": str(tmp_path)})
    try:
        _wait_for(lambda: len(list(pids.iterdir())) == 2, 30, "both ranks to start the test")
        tree = descendants(proc.pid)
        ranks = _recorded(pids)
        assert ranks <= tree, "ranks should be descendants of the pytest process"
        proc.send_signal(sig)
        proc.wait(15)
        _wait_for(lambda: not any(alive(p) for p in tree), 15, f"{sorted(tree)} to exit after {sig.name}")
        # A killed run cannot remove its rank logs; the next run that starts ranks does.
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
        logs.remove_stale_logs()
        assert not list(logs.logs_root().iterdir()), "a killed run's rank logs were kept"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_crashed_xdist_worker_leaves_no_rank_and_the_run_goes_on(pytester, tmp_path):
    pids = tmp_path / "pids"
    pids.mkdir()
    pytester.makepyfile(test_crash=WORKER_CRASH.format(pids=str(pids)))
    proc = _pytest(pytester, "-n", "1", "-p", "xdist", "--dist-timeout", "10")
    output, _ = proc.communicate(timeout=45)
    text = output.decode(errors="replace")
    assert "1 failed, 2 passed" in text, text
    ranks = _recorded(pids)
    assert len(ranks) == 2
    _wait_for(
        lambda: not any(alive(p) for p in ranks), 15, f"ranks {sorted(ranks)} to exit with their worker"
    )


def test_pytest_main_from_a_script_without_main_guard_runs_once_and_leaves_no_logs(pytester, request):
    """multiprocessing would re-run an unguarded script in every rank; the ranks must not."""
    # Short: multiprocessing puts its AF_UNIX sockets in TMPDIR, and those paths cap at 107 bytes.
    scratch = Path(tempfile.mkdtemp(prefix="h-", dir="/tmp"))
    request.addfinalizer(lambda: shutil.rmtree(scratch, ignore_errors=True))
    pytester.makepyfile(
        test_ranked="""
        import pytest
        import torch.distributed as dist

        @pytest.mark.world_size(2)
        def test_barrier():
            dist.barrier()
        """
    )
    script = pytester.path / "run_tests.py"
    script.write_text(
        "import sys\nimport pytest\n\n"
        "sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', '--tier', 'cpu', 'test_ranked.py']))\n"
    )
    run = subprocess.run(
        [sys.executable, str(script)],
        cwd=pytester.path,
        env={**os.environ, "TMPDIR": str(scratch)},
        capture_output=True,
        text=True,
        timeout=45,
    )
    assert run.returncode == 0 and "1 passed" in run.stdout, run.stdout + run.stderr
    assert run.stdout.count("1 passed") == 1, "the session ran again inside the ranks"
    logs = [p for p in scratch.glob("harness-ranks-*/*")]
    assert not logs, f"rank log folders left behind: {logs}"
