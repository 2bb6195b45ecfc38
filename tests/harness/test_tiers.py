"""The plugin's tier selection, test ids, explicit-tier errors and summary table."""

from __future__ import annotations

import pytest

from harness import devices

pytestmark = pytest.mark.tiers("cpu")

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
    assert result.ret != 0
    assert "test_x: @pytest.mark.tiers: unknown tier ['gpus']" in result.stdout.str()
