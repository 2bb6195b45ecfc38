"""The plugin's tier selection, test ids, explicit-tier errors and summary table."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from harness import devices
from harness.ci import inventory

# A self-test fails within 60 s when what it checks hangs, not at the suite-wide 600 s.
pytestmark = [pytest.mark.tiers("cpu"), pytest.mark.timeout(60)]

BODIES = """
import pytest

def test_plain(tier):
    assert tier.device.type == "cpu"

@pytest.mark.tiers("cpu")
def test_cpu_only(tier):
    assert tier.name == "cpu"

@pytest.mark.tiers("gpu")
def test_gpu_only(tier):
    assert tier.gpu_ids

def test_fails_everywhere(tier):
    assert tier.name == "nowhere"
"""


@pytest.fixture
def no_gpus(monkeypatch):
    """A machine without GPUs, whatever this one has (the plugin records its list)."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.delenv(devices.PHYSICAL_GPUS_ENV, raising=False)
    monkeypatch.delenv(devices.FAKE_GPUS_ENV, raising=False)
    monkeypatch.delenv(devices.HOME_GPU_ENV, raising=False)


@pytest.fixture
def fake_gpus(monkeypatch, tmp_path):
    monkeypatch.setenv(devices.FAKE_GPUS_ENV, "2")
    monkeypatch.setenv(devices.LEASE_DIR_ENV, str(tmp_path / "leases"))
    monkeypatch.delenv(devices.PHYSICAL_GPUS_ENV, raising=False)
    monkeypatch.delenv(devices.HOME_GPU_ENV, raising=False)


def test_ids_carry_the_tier_and_markers_narrow(pytester, no_gpus):
    pytester.makepyfile(test_bodies=BODIES)
    result = pytester.runpytest("--collect-only", "-q", "-p", "no:cacheprovider")
    ids = {line for line in result.outlines if "::" in line}
    assert ids == {
        "test_bodies.py::test_plain[cpu]",
        "test_bodies.py::test_plain[gpu]",
        "test_bodies.py::test_cpu_only[cpu]",
        "test_bodies.py::test_gpu_only[gpu]",
        "test_bodies.py::test_fails_everywhere[cpu]",
        "test_bodies.py::test_fails_everywhere[gpu]",
    }


def test_unsupported_tiers_skip_with_reason_by_default(pytester, no_gpus):
    pytester.makepyfile(test_bodies=BODIES)
    result = pytester.runpytest("-rs")
    result.assert_outcomes(passed=2, failed=1, skipped=3)
    result.stdout.fnmatch_lines(
        ["*not run here: tier 'gpu' needs at least 1 GPU(s); this machine has no CUDA device*"]
    )


def test_summary_table_counts_each_tier(pytester, no_gpus):
    pytester.makepyfile(test_bodies=BODIES)
    result = pytester.runpytest()
    result.stdout.fnmatch_lines(
        [
            "*harness tiers*",
            "tier*device*backend*passed*skipped*failed*note",
            "cpu*cpu*gloo*2*0*1",
            "gpu*-*nccl*0*3*0*not run here*",
            "multigpu*-*nccl*0*0*0*not run here*",
        ]
    )


def test_explicit_gpu_tier_without_gpus_fails_loudly(pytester, no_gpus):
    pytester.makepyfile(test_bodies=BODIES)
    result = pytester.runpytest("--tier", "gpu")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*requested tier cannot run on this machine: tier 'gpu' needs at least 1 GPU(s)*"]
    )


def test_explicit_multigpu_tier_with_one_gpu_fails(pytester, fake_gpus, monkeypatch):
    monkeypatch.setenv(devices.FAKE_GPUS_ENV, "1")
    pytester.makepyfile(test_bodies=BODIES)
    result = pytester.runpytest("--tier", "multigpu")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*tier 'multigpu' needs at least 2 GPU(s); this machine has only 1 GPU(s)*"])


@pytest.mark.parametrize("listed", ["cpu,gpu", "gpu,cpu"])
def test_explicit_list_mixing_a_runnable_and_an_unrunnable_tier_fails_naming_only_the_unrunnable(
    pytester, no_gpus, listed
):
    pytester.makepyfile(test_bodies=BODIES)
    result = pytester.runpytest("--tier", listed)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert result.stderr.lines[0] == (
        "ERROR: requested tier cannot run on this machine: tier 'gpu' needs at least 1 GPU(s); "
        "this machine has no CUDA device. Refusing to report green."
    )


def test_explicit_list_names_every_unrunnable_tier(pytester, fake_gpus, monkeypatch):
    monkeypatch.setenv(devices.FAKE_GPUS_ENV, "0")
    pytester.makepyfile(test_bodies=BODIES)
    result = pytester.runpytest("--tier", "multigpu,cpu,gpu")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert result.stderr.lines[0] == (
        "ERROR: requested tier cannot run on this machine: "
        "tier 'multigpu' needs at least 2 GPU(s); this machine has no CUDA device; "
        "tier 'gpu' needs at least 1 GPU(s); this machine has no CUDA device. Refusing to report green."
    )
    monkeypatch.setenv(devices.FAKE_GPUS_ENV, "1")
    both = pytester.runpytest("--tier", "cpu,gpu")
    both.assert_outcomes(passed=4, failed=2, deselected=0)


def test_an_inventory_lists_explicit_tiers_this_machine_cannot_run(pytester, no_gpus, tmp_path):
    """CI sizes GPU jobs on a CPU runner: the inventory checks no tier against the machine."""
    pytester.makepyfile(test_bodies=BODIES)
    listed = tmp_path / "inventory.json"
    result = pytester.runpytest("--collect-only", "-q", "--tier", "cpu,gpu", f"--harness-inventory={listed}")
    assert result.ret == pytest.ExitCode.OK
    text = listed.read_text()  # one field a line, for readable CI artifacts and diffs
    assert text.startswith(
        '[\n {\n  "id": "test_bodies.py::test_plain[cpu]",\n  "tier": "cpu",\n  "gpus": 0\n },'
    )
    assert text.endswith("\n }\n]\n")
    assert [(e.tier, e.gpus) for e in inventory.read(listed)] == [
        ("cpu", 0),
        ("gpu", 1),
        ("cpu", 0),
        ("gpu", 1),
        ("cpu", 0),
        ("gpu", 1),
    ]


def test_unknown_tier_name_is_rejected(pytester, no_gpus):
    pytester.makepyfile(test_bodies=BODIES)
    result = pytester.runpytest("--tier", "cpu,tpu")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert (
        "--tier 'cpu,tpu': unknown tier ['tpu']; choose from ['cpu', 'gpu', 'multigpu']"
        in result.stderr.str()
    )


def test_explicit_tier_deselects_the_others(pytester, no_gpus):
    pytester.makepyfile(test_bodies=BODIES)
    result = pytester.runpytest("--tier", "cpu")
    result.assert_outcomes(passed=2, failed=1, deselected=3)
    result.stdout.fnmatch_lines(["gpu*not selected (--tier)"])


def test_fake_gpus_run_the_gpu_tier_on_cpu_with_leases(pytester, fake_gpus):
    pytester.makepyfile(test_bodies=BODIES)
    result = pytester.runpytest("--tier", "gpu")
    result.assert_outcomes(passed=2, failed=1, deselected=3)
    result.stdout.fnmatch_lines(["gpu*2 fake GPUs (cpu)*gloo*2*0*1*"])


def test_bad_tiers_marker_is_a_usage_error(pytester, no_gpus):
    pytester.makepyfile(
        test_bad="""
        import pytest

        @pytest.mark.tiers("gpus")
        def test_x(tier):
            pass
        """
    )
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert (
        "test_x: @pytest.mark.tiers: takes tier names, each one of ['cpu', 'gpu', 'multigpu'], got tiers('gpus')"
        in result.stdout.str()
    )


def test_an_unrelated_project_is_left_alone(tmp_path):
    """Installed but not enabled: plain ids, no table, no step summary, no environment or torch changes."""
    (tmp_path / "test_plain.py").write_text(
        "import os, sys\n\n"
        "def test_plain():\n"
        "    assert 'torch' not in sys.modules\n"
        "    assert 'OMP_NUM_THREADS' not in os.environ and 'HARNESS_PHYSICAL_GPUS' not in os.environ\n"
        "    assert os.environ['CUDA_VISIBLE_DEVICES'] == '0,1'\n"
    )
    summary = tmp_path / "step-summary.md"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HARNESS_", "OMP_NUM_THREADS"))}
    env.update(CUDA_VISIBLE_DEVICES="0,1", GITHUB_STEP_SUMMARY=str(summary))
    pytest_cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider"]
    collected = subprocess.run(
        [*pytest_cmd, "--collect-only", "-q"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert "test_plain.py::test_plain\n" in collected.stdout and "[" not in collected.stdout.split("\n")[0]
    ran = subprocess.run(
        [*pytest_cmd, "-n", "1", "-q"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "harness tiers" not in collected.stdout + ran.stdout
    assert not summary.exists()


def test_tier_fixture_without_the_harness_enabled_says_how_to_enable_it(pytester):
    (pytester.path / "tox.ini").unlink()
    pytester.makepyfile(test_x="def test_x(tier):\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*the harness is not enabled for this project: add `harness = true`*"])


@pytest.mark.parametrize(
    ("listed", "expected"),
    [
        ("0,1", ["0", "1"]),
        ("-1", []),
        ("", []),
        ("1,-1,2", ["1"]),
        ("2,2", []),
        (" 3 ,1gpu", ["3", "1"]),
        ("GPU-aa,GPU-bb,3", ["GPU-aa", "GPU-bb"]),
        ("MIG-x", ["MIG-x"]),
    ],
)
def test_cuda_visible_devices_is_read_as_cuda_reads_it(listed, expected):
    assert devices.parse_cuda_visible_devices(listed) == expected


@pytest.mark.parametrize("listed", ["-1", "0,1"])
def test_gpu_count_is_what_cuda_reports_not_the_environment(listed):
    """A CPU-only torch (this machine) has no GPU, whatever CUDA_VISIBLE_DEVICES lists."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HARNESS_")}
    env["CUDA_VISIBLE_DEVICES"] = listed
    run = subprocess.run([sys.executable, "-m", "harness", "gpus"], env=env, capture_output=True, text=True)
    assert run.stdout.strip() == "0", run.stdout + run.stderr


def test_listed_but_absent_gpus_skip_the_gpu_tier(pytester, no_gpus, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    pytester.makepyfile(test_bodies=BODIES)
    result = pytester.runpytest()
    result.assert_outcomes(passed=2, failed=1, skipped=3)
    result.stdout.fnmatch_lines(["gpu*-*nccl*0*0*3*0*not run here*"])


def test_tests_that_need_real_cuda_skip_under_fake_gpus(pytester, fake_gpus):
    pytester.makepyfile(
        test_cuda="""
        def test_allocator(tier):
            tier.cuda_peak_bytes(lambda: None)

        def test_cuda_report(tier):
            tier.require_cuda("the CUDA report")
            raise AssertionError("ran without CUDA")
        """
    )
    result = pytester.runpytest("--tier", "gpu", "-rs")
    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines(
        [
            "*test_cuda.py:2: cuda_peak_bytes needs real CUDA; HARNESS_FAKE_GPUS runs tier 'gpu' on CPU*",
            "*test_cuda.py:5: the CUDA report needs real CUDA; HARNESS_FAKE_GPUS runs tier 'gpu' on CPU*",
        ]
    )


DETERMINISM = """
import os
import pytest
import torch


def observed():
    return os.environ.get("CUBLAS_WORKSPACE_CONFIG"), torch.are_deterministic_algorithms_enabled()


def test_a_body(tier):
    expected = (":4096:8", True) if tier.name != "cpu" else (None, False)
    assert observed() == expected
    assert tier.tolerances(torch.float32) == (0.0, 0.0)


@pytest.mark.world_size(2)
def test_b_rank(tier):
    expected = (":4096:8", True) if tier.name != "cpu" else (None, False)
    assert observed() == expected


def test_c_nothing_leaks_into_the_pytest_process_after():
    assert observed() == (None, False)
"""


def test_gpu_tiers_run_deterministic_in_bodies_and_ranks_and_nothing_leaks(pytester, fake_gpus, monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    pytester.makepyfile(test_determinism=DETERMINISM)
    result = pytester.runpytest("--tier", "cpu,gpu,multigpu", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=5)
    assert (
        "test_determinism.py::test_b_rank[ws2-multigpu] PASSED"
        in pytester.runpytest("--tier", "multigpu", "-v", "-p", "no:cacheprovider").stdout.str()
    )


def test_the_table_counts_a_test_by_its_worst_phase(pytester, no_gpus):
    pytester.makepyfile(
        test_phases="""
        import pytest

        @pytest.fixture
        def breaks_after():
            yield
            raise RuntimeError("teardown failed")

        def test_passes_then_errors(tier, breaks_after):
            pass

        def test_skips(tier):
            pytest.skip("not today")
        """
    )
    result = pytester.runpytest("--tier", "cpu", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, skipped=1, errors=1)
    (row,) = [line.split() for line in result.outlines if line.startswith("cpu ")]
    assert row == ["cpu", "cpu", "gloo", "0", "0", "1", "1"]  # passed flaky skipped failed
