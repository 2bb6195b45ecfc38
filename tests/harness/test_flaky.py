"""Flaky tests in the open: reruns (fresh ranks for multi-rank tests), the flaky column,
the setting that decides the exit code, repro lines that reproduce, the quarantine."""

from __future__ import annotations

import os
import re
import shlex
import xml.etree.ElementTree as ET

import pytest

# A self-test fails within 60 s when what it checks hangs, not at the suite-wide 600 s.
pytestmark = [pytest.mark.tiers("cpu"), pytest.mark.timeout(60)]

FLAKY = """
import os
import pytest
import torch.distributed as dist

MARKS = {marks!r}


def first_time(name):
    path = os.path.join(MARKS, name)
    if os.path.exists(path):
        return False
    open(path, "w").close()
    return True


def test_fails_once(tier):
    assert not first_time("single"), "first attempt fails"


@pytest.mark.world_size(2)
def test_rank_fails_once():
    with open(os.path.join(MARKS, f"pid-{{dist.get_rank()}}-{{os.getpid()}}"), "w"):
        pass
    dist.barrier()
    if dist.get_rank() == 0:
        assert not first_time("ranked"), "first attempt fails in rank 0"
"""

QUARANTINED = """
def test_known_flaky(tier):
    assert False, "fails every time"
"""


def _marks(tmp_path, name):
    marks = tmp_path / name
    marks.mkdir()
    return marks


def test_a_test_passing_on_rerun_is_flaky_and_multi_rank_reruns_get_fresh_ranks(
    pytester, tmp_path, monkeypatch
):
    marks = _marks(tmp_path, "marks")
    step_summary = tmp_path / "step-summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(step_summary))
    pytester.makepyfile(test_flaky=FLAKY.format(marks=str(marks)), test_quarantined=QUARANTINED)
    pytester.path.joinpath("quarantine.toml").write_text(
        'ready_after = 1\n[[test]]\nid = "test_quarantined.py::test_known_flaky"\n'
        'reason = "fails on purpose"\nlink = "https://example.org/issue/1"\n'
    )
    pytester.makeini("[pytest]\nharness = true\nharness_quarantine = quarantine.toml\n")
    junit = tmp_path / "junit.xml"
    result = pytester.runpytest("--tier", "cpu", "--reruns", "1", f"--junitxml={junit}")
    out = result.stdout.str()
    assert result.ret == pytest.ExitCode.OK, out
    result.stdout.fnmatch_lines(["tier*passed*flaky*skipped*failed*", "cpu*cpu*gloo*0*2*1*0*"])
    assert "FLAKY: 2 test(s) failed, then passed on a rerun; they do NOT fail this run" in out
    assert "QUARANTINED: test_quarantined.py::test_known_flaky[cpu] failed (not counted)" in out
    pids = {name.split("-")[1]: set() for name in os.listdir(marks) if name.startswith("pid-")}
    for name in os.listdir(marks):
        if name.startswith("pid-"):
            pids[name.split("-")[1]].add(name.split("-")[2])
    assert all(len(seen) == 2 for seen in pids.values()), f"the rerun reused its ranks: {pids}"
    properties = {
        (case.get("name"), prop.get("name"))
        for case in ET.parse(junit).getroot().iter("testcase")
        for prop in case.iter("property")
    }
    assert ("test_fails_once[cpu]", "flaky") in properties
    assert ("test_rank_fails_once[ws2-cpu]", "flaky") in properties
    assert step_summary.read_text() == (
        "| tier | device | backend | passed | flaky | skipped | failed | note |\n"
        "|---|---|---|---|---|---|---|---|\n"
        "| cpu | cpu | gloo | 0 | 2 | 1 | 0 |  |\n"
        "| gpu | - | nccl | 0 | 0 | 0 | 0 | not selected (--tier) |\n"
        "| multigpu | - | nccl | 0 | 0 | 0 | 0 | not selected (--tier) |\n"
        "\n**FLAKY**: 2 test(s) failed, then passed on a rerun; they do NOT fail this run "
        "(pass --fail-on-flaky to make them):\n"
        "\n- `test_flaky.py::test_fails_once[cpu]`\n"
        "\n- `test_flaky.py::test_rank_fails_once[ws2-cpu]`\n"
        "\n**QUARANTINED**: test_quarantined.py::test_known_flaky[cpu] failed (not counted) "
        "(entry 'test_quarantined.py::test_known_flaky')\n"
    )


def test_fail_on_flaky_makes_a_flaky_test_fail_the_run(pytester, tmp_path):
    pytester.makepyfile(test_flaky=FLAKY.format(marks=str(_marks(tmp_path, "marks"))))
    result = pytester.runpytest(
        "--tier", "cpu", "--reruns", "1", "--fail-on-flaky", "-k", "fails_once and not rank"
    )
    assert result.ret == 7
    assert "they FAIL this run (--fail-on-flaky)" in result.stdout.str()


def test_a_failure_prints_a_repro_line_that_fails_the_same_way(pytester, tmp_path, monkeypatch):
    """The line is split as a shell splits it (shlex) and run by a fresh in-process pytest."""
    pytester.makepyfile(
        test_always="""
        import os
        import pytest
        import torch

        def test_always_fails(tier):
            drawn = torch.rand(1).item()
            assert drawn < 0, f"drew {drawn} with OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}"
        """
    )
    junit = tmp_path / "junit.xml"
    step_summary = tmp_path / "step-summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(step_summary))
    result = pytester.runpytest("--tier", "cpu", "--harness-seed", "7", f"--junitxml={junit}")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    out = result.stdout.str()
    line = re.search(r"^REPRO test_always.py::test_always_fails\[cpu\]: (.*)$", out, re.M).group(1)
    assert "--harness-seed 7" in line and "# torch " in line and "CUDA" in line and "NCCL" in line
    drawn = re.search(r"drew (\S+) with", out).group(1)
    (case,) = ET.parse(junit).getroot().iter("testcase")
    assert {p.get("name"): p.get("value") for p in case.iter("property")}["repro"] == line
    assert step_summary.read_text().endswith(
        f"\n**REPRO test_always.py::test_always_fails[cpu]**:\n```\n{line}\n```\n"
    )
    monkeypatch.delenv("GITHUB_STEP_SUMMARY")
    tokens = shlex.split(line.split("  #")[0])
    start = tokens.index("python")
    assert tokens[start : start + 3] == ["python", "-m", "pytest"], line
    for assignment in tokens[:start]:
        name, _, value = assignment.partition("=")
        monkeypatch.setenv(name, value)
    rerun = pytester.runpytest(*tokens[start + 3 :])
    assert rerun.ret == pytest.ExitCode.TESTS_FAILED
    assert f"drew {drawn} with" in rerun.stdout.str(), "the repro line did not reproduce the same failure"


def test_a_quarantine_entry_is_ready_to_remove_after_its_tests_pass_ready_after_runs_in_a_row(
    pytester, monkeypatch
):
    """Every test of the entry must pass for a run to count; one failure starts the count again."""
    pytester.makepyfile(
        test_q="""
        import os
        import pytest

        @pytest.mark.parametrize("p", [1, 2])
        def test_q(tier, p):
            assert p == 2 or os.environ.get("SELFTEST_FAIL") != "1"  # the entry's first test fails
        """
    )
    pytester.path.joinpath("quarantine.toml").write_text(
        'ready_after = 2\n[[test]]\nid = "test_q.py::test_q"\nreason = "flaky"\nlink = "https://example.org/2"\n'
    )
    pytester.makeini("[pytest]\nharness = true\nharness_quarantine = quarantine.toml\n")
    ready = "QUARANTINE: 'test_q.py::test_q' passed 2 runs in a row: ready to remove"

    def run(fail: bool) -> str:
        monkeypatch.setenv("SELFTEST_FAIL", "1" if fail else "0")
        return pytester.runpytest("--tier", "cpu").stdout.str()

    assert ready not in run(fail=False)
    second = run(fail=False)
    assert ready in second
    assert "QUARANTINED: test_q.py::test_q[cpu-1] passed (entry 'test_q.py::test_q')" in second
    failed = run(fail=True)
    assert ready not in failed
    assert "QUARANTINED: test_q.py::test_q[cpu-1] failed (not counted) (entry 'test_q.py::test_q')" in failed
    assert ready not in run(fail=False)
    assert ready in run(fail=False)
