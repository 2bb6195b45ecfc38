"""world_size tests behave as pytest runs the same body in-process, and each starts clean.

One inner run carries every case (pool start-up is the cost, so they share it):
state a test leaves in a pooled rank, collectives it leaves unmatched,
processes it starts, class set-up, xfail(raises=), warning filters, returned
values, locals (-l), skip locations, output in JUnit, capped rank logs.
"""

from __future__ import annotations

import os
import re
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

# A self-test fails within 60 s when what it checks hangs, not at the suite-wide 600 s.
pytestmark = [pytest.mark.tiers("cpu"), pytest.mark.timeout(60)]

BODIES = """
import os, signal, subprocess, sys, threading, time, warnings
import pytest
import torch
import torch.distributed as dist

PIDS = {pids!r}


def record(name, value):
    with open(os.path.join(PIDS, f"{{name}}-{{dist.get_rank()}}"), "w") as f:
        f.write(str(value))


def recorded(name):
    with open(os.path.join(PIDS, f"{{name}}-{{dist.get_rank()}}")) as f:
        return f.read()


def alive(pid):
    try:
        with open(f"/proc/{{pid}}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.world_size(2)
def test_a_leaves_a_mess(monkeypatch, tmp_path):
    record("threads", torch.get_num_threads())
    record("cwd", tmp_path)
    torch.manual_seed(1234)
    torch.set_default_dtype(torch.float64)
    torch.use_deterministic_algorithms(True)
    torch.set_grad_enabled(False)
    torch.set_num_threads(torch.get_num_threads() + 1)
    dist.new_group([0, 1])
    os.chdir(tmp_path)
    sys.path.insert(0, str(tmp_path))
    (tmp_path / "leftover_module.py").write_text("VALUE = 1")
    import leftover_module  # noqa: F401
    monkeypatch.setattr(dist, "get_world_size", lambda *args, **kwargs: 99)
    record("sleeper", subprocess.Popen(["sleep", "300"]).pid)
    record("grandchild", start_grandchild(parent_stays=True))
    record("orphaned_grandchild", start_grandchild(parent_stays=False))


# A thread left running replaces the pool, so this has its own pair of tests.
@pytest.mark.world_size(2)
def test_a2_starts_a_child_from_a_thread():
    started = threading.Event()
    threading.Thread(target=start_from_a_thread, args=(started,), daemon=True).start()
    started.wait()


@pytest.mark.world_size(2)
def test_a3_the_threads_child_was_ended():
    assert not alive(int(recorded("thread_child"))), "a child started from a thread is still running"


# The child's parent is the thread, which is still alive when the test ends; the child
# has a session of its own, out of reach of a kill of the rank's process group.
def start_from_a_thread(started):
    record("thread_child", subprocess.Popen(["sleep", "300"], start_new_session=True).pid)
    started.set()
    time.sleep(3)


GRANDPARENT = (
    "import subprocess, sys, time\\n"
    "pid = subprocess.Popen(['sleep', '300'], start_new_session=True).pid\\n"
    "print(pid, flush=True)\\n"
    "if sys.argv[1] == 'stay':\\n"
    "    time.sleep(300)\\n"
)


# A child that starts its own child, then waits or exits; returns the grandchild's pid.
def start_grandchild(parent_stays):
    child = subprocess.Popen(
        [sys.executable, "-c", GRANDPARENT, "stay" if parent_stays else "exit"], stdout=subprocess.PIPE, text=True
    )
    pid = int(child.stdout.readline())
    if not parent_stays:
        child.wait()
    return pid


@pytest.mark.world_size(2)
def test_b_starts_clean():
    first = torch.rand(3)
    torch.manual_seed(0)  # the harness seed
    assert torch.equal(first, torch.rand(3))
    assert torch.get_default_dtype() == torch.float32
    assert not torch.are_deterministic_algorithms_enabled()
    assert torch.is_grad_enabled()
    assert torch.get_num_threads() == int(recorded("threads"))
    assert dist.get_world_size() == 2
    assert list(dist.distributed_c10d._world.pg_map) == [dist.distributed_c10d._get_default_group()]
    assert os.getcwd() != recorded("cwd")
    assert recorded("cwd") not in sys.path and "leftover_module" not in sys.modules
    for name in ("sleeper", "grandchild", "orphaned_grandchild"):
        assert not alive(int(recorded(name))), f"the {{name}} the last test started is still running"


@pytest.mark.world_size(2)
def test_c_leaves_a_collective_unmatched():
    if dist.get_rank() == 0:
        dist.all_reduce(torch.ones(1), async_op=True)


@pytest.mark.world_size(2)
def test_d_collectives_line_up():
    total = torch.tensor([float(dist.get_rank() + 1)])
    dist.all_reduce(total)
    assert total.item() == 3.0


class TestClassSemantics:
    def setup_method(self, method):
        self.from_setup = 7

    @pytest.fixture(autouse=True)
    def attach(self):
        self.from_fixture = "yes"

    @pytest.mark.world_size(2)
    def test_method_sees_its_attributes(self):
        assert (self.from_setup, self.from_fixture) == (7, "yes")


@pytest.mark.xfail(raises=ValueError, strict=True)
@pytest.mark.world_size(2)
def test_xfail_with_the_expected_error():
    raise ValueError("expected")


@pytest.mark.xfail(raises=ValueError)
@pytest.mark.world_size(2)
def test_xfail_with_another_error_fails():
    raise TypeError("not the expected error")


@pytest.mark.world_size(2)
def test_future_warning_is_an_error_under_w():
    warnings.warn("an old api", FutureWarning)


@pytest.mark.filterwarnings("error::RuntimeWarning")
@pytest.mark.world_size(2)
def test_filterwarnings_marker_applies():
    warnings.warn("marked as an error", RuntimeWarning)


@pytest.mark.world_size(2)
def test_warning_reaches_the_summary():
    warnings.warn("a rank warning for the summary", UserWarning)


@pytest.mark.world_size(2)
def test_returns_a_value():
    return 5


@pytest.mark.world_size(2)
def test_locals_are_shown():
    secret_local = "shown-with-l"
    assert dist.get_rank() < 0, secret_local


@pytest.mark.world_size(2)
def test_prints():
    print(f"hello from rank {{dist.get_rank()}}")


@pytest.mark.world_size(2)
def test_floods_its_log():
    sys.stdout.write("x" * (3 << 20) + "\\n")


@pytest.mark.world_size(2)
def test_log_starts_empty():
    assert os.fstat(1).st_size < (1 << 20), "the rank log keeps growing across tests"


@pytest.mark.world_size(2)
def test_skips_here():
    pytest.skip("skipped in every rank")


@pytest.mark.world_size(2)
@pytest.mark.isolated
def test_isolated_leaves_a_process():
    record("isolated_sleeper", subprocess.Popen(["sleep", "300"]).pid)


@pytest.mark.world_size(2)
def test_z_crash_leaves_a_process():
    record("crash_sleeper", subprocess.Popen(["sleep", "300"]).pid)
    if dist.get_rank() == 1:
        os.kill(os.getpid(), signal.SIGSEGV)
    dist.barrier()
"""


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _line(source: str, text: str) -> int:
    return next(n for n, line in enumerate(source.splitlines(), 1) if text in line)


def test_pooled_ranks_start_clean_and_keep_pytest_semantics(pytester, tmp_path):
    pids = tmp_path / "pids"
    pids.mkdir()
    source = BODIES.format(pids=str(pids))
    written = pytester.makepyfile(test_sem=source).read_text()
    junit = tmp_path / "junit.xml"
    result = pytester.runpytest(
        "--tier", "cpu", "--dist-timeout", "10", "-p", "no:cacheprovider", "-rfs", "-l",
        "-W", "error::FutureWarning", f"--junitxml={junit}", "-o", "junit_logging=all",
    )  # fmt: skip
    out = result.stdout.str()
    result.assert_outcomes(passed=13, failed=5, skipped=1, xfailed=1)
    failed = set(re.findall(r"FAILED test_sem.py::(\w+)", out))
    assert failed == {
        "test_xfail_with_another_error_fails",
        "test_future_warning_is_an_error_under_w",
        "test_filterwarnings_marker_applies",
        "test_locals_are_shown",
        "test_z_crash_leaves_a_process",
    }
    assert "FutureWarning: an old api" in out and "RuntimeWarning: marked as an error" in out
    assert "secret_local = 'shown-with-l'" in out
    assert "UserWarning: a rank warning for the summary" in out
    # Both ranks warn alike: the summary shows it once, as for one process.
    assert out.count("test_sem.py::test_warning_reaches_the_summary[ws2-cpu]\n") == 1, out
    assert "PytestReturnNotNoneWarning" in out and "returned a int" in out
    assert "RankPoolReplaced" in out and "left a collective unmatched" in out
    assert f"test_sem.py:{_line(written, 'skipped in every rank')}: skipped in every rank" in out

    cases = {case.get("name"): case for case in ET.parse(junit).getroot().iter("testcase")}
    printed = cases["test_prints[ws2-cpu]"].findtext("system-out")
    assert "[rank 0] hello from rank 0" in printed and "[rank 1] hello from rank 1" in printed
    assert "bytes cut" in cases["test_floods_its_log[ws2-cpu]"].findtext("system-out")

    sleepers = [int(p.read_text()) for p in pids.iterdir() if "sleeper" in p.name]
    assert len(sleepers) == 6
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in sleepers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in sleepers if _alive(pid)], "processes started in ranks outlived the run"


def test_s_streams_rank_output_live_with_rank_prefixes(pytester):
    pytester.makepyfile(
        test_loud="""
        import pytest
        import torch.distributed as dist

        @pytest.mark.world_size(2)
        def test_talks():
            print(f"live line from {dist.get_rank()}")
        """
    )
    result = pytester.runpytest("--tier", "cpu", "-s", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines_random(["*[[]rank 0[]] live line from 0*", "*[[]rank 1[]] live line from 1*"])


@pytest.mark.parametrize(
    "files",
    [
        {
            "test_unit": """
            import unittest
            import pytest

            pytestmark = pytest.mark.world_size(2)

            class TestCase(unittest.TestCase):
                def test_method(self):
                    pass
            """
        },
        {"test_doc": '"""\n>>> 1 + 1\n2\n"""\nimport pytest\n\npytestmark = pytest.mark.world_size(2)\n'},
    ],
    ids=["unittest", "doctest"],
)
def test_world_size_on_non_function_items_is_a_usage_error(pytester, files):
    pytester.makepyfile(**files)
    result = pytester.runpytest("--tier", "cpu", "--doctest-modules", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    result.stderr.fnmatch_lines(["*world_size applies to test functions and methods only*"])


@pytest.mark.parametrize("value", ["0", "-1"])
def test_dist_timeout_must_be_positive(pytester, value):
    pytester.makepyfile(test_x="def test_x():\n    pass\n")
    result = pytester.runpytest("--dist-timeout", value)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*--dist-timeout {value}: must be a number of seconds above 0*"])


def test_misspelled_harness_marker_is_an_error_without_strict_markers(pytester):
    pytester.makepyfile(
        test_typo="""
        import pytest

        @pytest.mark.world_sizes(2)
        def test_x():
            pass
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unknown marker 'world_sizes'; did you mean 'world_size'?*"])


def test_a_projects_own_markers_that_resemble_harness_markers_are_left_alone(pytester):
    """Only near-certain typos are errors: `tiered`, `isolation` and `world` are someone's own markers."""
    pytester.makepyfile(
        test_own="""
        import pytest

        @pytest.mark.tiered
        @pytest.mark.isolation
        @pytest.mark.world
        def test_x():
            pass
        """
    )
    pytester.runpytest(
        "-p", "no:cacheprovider", "-W", "ignore::pytest.PytestUnknownMarkWarning"
    ).assert_outcomes(passed=1)


def test_stale_log_folders_of_killed_runs_are_removed(tmp_path, monkeypatch):
    import tempfile

    from harness.ranks import logs

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = logs.logs_root() / "999999999-abc"
    mine = logs.logs_root() / f"{os.getpid()}-abc"
    for folder in (dead, mine):
        folder.mkdir(parents=True)
    logs.remove_stale_logs()
    assert not dead.exists() and mine.exists()
