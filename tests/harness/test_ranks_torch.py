"""torch's MultiProcessTestCase family on the rank pools (`--pool-torch-tests`): torch's outcomes
(its exit codes, SkipTest in a rank, errors piped to the parent, a continuous class's poison
pill), faults reported with every rank's stack, and a class the pools cannot host run on
torch's own spawn path."""

from __future__ import annotations

import json

import pytest
from torch.testing._internal.common_distributed import MultiProcContinuousTest, MultiProcessTestCase

from harness import devices
from harness.ranks.torch_tests import fallback_reason

# A self-test fails within 60 s when what it checks hangs, not at the suite-wide 600 s.
pytestmark = [pytest.mark.tiers("cpu"), pytest.mark.timeout(60)]

CASES = """
import os, time, unittest
import pytest
import torch
import torch.distributed as dist
from torch.testing._internal.common_distributed import (
    TIMEOUT_OVERRIDE, MultiProcessTestCase, skip_if_lt_x_gpu,
)
from torch.testing._internal.common_utils import find_free_port

TIMEOUT_OVERRIDE["test_f_hangs"] = 3


class TwoRanks(MultiProcessTestCase):
    @property
    def world_size(self):
        return 2

    def setUp(self):
        super().setUp()
        os.environ["MASTER_ADDR"] = "127.0.0.1"
        os.environ["MASTER_PORT"] = str(find_free_port())
        self._spawn_processes()

    def all_reduce_ranks(self):
        total = torch.tensor([float(self.rank + 1)])
        dist.all_reduce(total)
        return total.item()

    def test_a_passes_with_a_file_group(self):
        dist.init_process_group("gloo", init_method=f"file://{{self.file_name}}", rank=self.rank, world_size=2)
        self.assertEqual(self.all_reduce_ranks(), 3.0)

    def test_b_passes_with_an_env_group(self):
        dist.init_process_group("gloo", init_method="env://", rank=self.rank, world_size=2)
        self.assertEqual(self.all_reduce_ranks(), 3.0)
        dist.destroy_process_group()

    def test_c_fails_on_rank_1(self):
        if self.rank == 1:
            raise ValueError("rank 1 disagrees")

    @skip_if_lt_x_gpu(2)
    def test_d_skips_by_exit_code(self):
        pass

    def test_e_skips_by_skiptest(self):
        raise unittest.SkipTest("not in a rank")

    # The hang comes before the crash: on the ranks the tests above warmed (the crash
    # replaces them), so their start-up under load does not count towards its 3 s.
    def test_f_hangs(self):
        if self.rank == 0:
            time.sleep(30)

    def test_g_crashes(self):
        if self.rank == 1:
            os._exit(3)
        time.sleep(30)

    def test_h_passes_after_the_faults(self):
        self.assertIsNone(dist.distributed_c10d.GroupMember.WORLD)


@pytest.mark.world_size(2)
async def test_async_body_fails():
    raise AssertionError("never runs")
"""


def _run_pooled(pytester: pytest.Pytester, name: str, source: str) -> pytest.RunResult:
    pytester.makepyfile(**{name: source})
    return pytester.runpytest(
        "--tier", "cpu", "--pool-torch-tests", "-p", "no:cacheprovider", "-rA", "--dist-timeout", "20"
    )


def _has_lines(result: pytest.RunResult, *lines: str) -> None:
    for line in lines:
        result.stdout.fnmatch_lines([line])  # one at a time: the summary's order is pytest's


def test_torch_classes_run_pooled_with_torchs_outcomes(pytester):
    result = _run_pooled(pytester, "test_torch_cases", CASES.format())
    out = result.stdout.str()
    result.assert_outcomes(passed=3, failed=4, skipped=2)
    _has_lines(
        result,
        "PASSED *::TwoRanks::test_a_passes_with_a_file_group",
        "PASSED *::TwoRanks::test_b_passes_with_an_env_group",
        "PASSED *::TwoRanks::test_h_passes_after_the_faults",
        "SKIPPED * Need at least 2 CUDA devices",
        "SKIPPED * Test skipped at subprocess level*",
        "FAILED *::TwoRanks::test_c_fails_on_rank_1 - RuntimeError*",
        "FAILED *::TwoRanks::test_f_hangs - RuntimeError*",
        "FAILED *::TwoRanks::test_g_crashes - RuntimeError*",
        "FAILED *::test_async_body_fails*",
    )
    assert "an async def test cannot run in ranks" in out
    assert "RuntimeError: Process 1 exited with error code 10 and exception:" in out, "torch's own check"
    # Counted in the failure reports ("E" lines): the short summary's width depends on the terminal.
    torch_timeouts = [
        line
        for line in result.outlines
        if line.startswith("E") and "Process 0 terminated or timed out" in line
    ]
    assert len(torch_timeouts) == 2, "torch's own check"
    assert "ValueError: rank 1 disagrees" in out, "the failing rank's traceback reaches the report"
    assert "rank 1 of 2 killed by" not in out and "rank 1 of 2 exited with code 3" in out, "the crash's cause"
    assert "in test_f_hangs" in out, "a hung rank's Python stack is in the report"
    assert "still running after 3s (torch's timeout for this test)" in out
    assert "TORCH TESTS: 8 pooled, 0 on torch's own spawn path" in out


# A continuous class on gloo with two ranks, the base of the continuous classes below.
GLOO = """
class Gloo(MultiProcContinuousTest):
    world_size = 2

    @classmethod
    def backend_str(cls):
        return "gloo"

    def all_reduce_ranks(self):
        total = torch.tensor([float(self.rank + 1)])
        dist.all_reduce(total)
        return total.item()
"""


CONTINUOUS = """
import os, time
import pytest
import torch
import torch.distributed as dist
from torch.testing._internal.common_distributed import (
    TIMEOUT_OVERRIDE, MultiProcContinuousTest, skip_if_lt_x_gpu,
)

TIMEOUT_OVERRIDE["test_b_hangs"] = 3


{gloo}

class TestA(Gloo):
    def test_a_passes(self):
        print(f"rank {{self.rank}} was here")
        torch.set_default_dtype(torch.float64)
        self.assertEqual(self.all_reduce_ranks(), 3.0)

    def test_b_fails_on_rank_0(self):
        self.assertEqual(self.rank, 1)

    def test_c_poisoned(self):
        pass


class TestB(Gloo):
    @skip_if_lt_x_gpu(2)
    def test_a_skips_by_exit_code(self):
        pass

    def test_b_starts_fresh_after_a_class(self):
        self.assertEqual(torch.get_default_dtype(), torch.float32)
        self.assertEqual(self.all_reduce_ranks(), 3.0)


class TestC(Gloo):
    def test_a_crashes(self):
        self.all_reduce_ranks()  # both ranks are past the group's set-up
        if self.rank == 1:
            os._exit(3)
        time.sleep(30)

    def test_b_poisoned(self):
        pass


# The faulty tests below come after a first test: a class after a fault starts on fresh
# ranks, and their start-up must not count towards the short timeouts.
class TestD(Gloo):
    def test_a_warms_up(self):
        self.all_reduce_ranks()

    def test_b_hangs(self):
        if self.rank == 0:
            time.sleep(30)


class TestE(Gloo):
    def test_a_warms_up(self):
        self.all_reduce_ranks()

    @pytest.mark.timeout(3)
    def test_b_outlives_pytest_timeout(self):
        if self.rank == 0:
            time.sleep(30)

    def test_c_poisoned(self):
        pass


class TestF(Gloo):
    @classmethod
    def backend_str(cls):
        return "no-such-backend"

    def test_a_group_fails_to_start(self):
        pass

    def test_b_poisoned(self):
        pass


class TestG(Gloo):
    def test_passes_after_the_faults(self):
        self.assertEqual(self.all_reduce_ranks(), 3.0)
"""


def test_continuous_classes_run_pooled_with_torchs_outcomes(pytester):
    result = _run_pooled(pytester, "test_continuous", CONTINUOUS.format(gloo=GLOO))
    out = result.stdout.str()
    result.assert_outcomes(passed=5, failed=5, skipped=5)
    _has_lines(
        result,
        "PASSED *::TestA::test_a_passes",
        "PASSED *::TestB::test_b_starts_fresh_after_a_class",
        "PASSED *::TestG::test_passes_after_the_faults",
        "FAILED *::TestF::test_a_group_fails_to_start*",
        "SKIPPED * Previous test failed, skipping test_continuous.TestF.test_b_poisoned",
        "FAILED *::TestE::test_b_outlives_pytest_timeout*",
        "SKIPPED * Previous test failed, skipping test_continuous.TestE.test_c_poisoned",
        "FAILED *::TestA::test_b_fails_on_rank_0*",
        "SKIPPED * Previous test failed, skipping test_continuous.TestA.test_c_poisoned",
        "SKIPPED * Need at least 2 CUDA devices",
        "FAILED *::TestC::test_a_crashes*",
        "SKIPPED * Previous test failed, skipping test_continuous.TestC.test_b_poisoned",
        "FAILED *::TestD::test_b_hangs*",
        # The failure reports ("E" lines), not the short summary, whose width is the terminal's.
        "E * RuntimeError: Exception in worker process:",
        "E * RuntimeError: rank 1 of 2 exited with code 3",
        "E * RuntimeError: test_continuous.TestD.test_b_hangs: still running after 3s (torch's timeout*",
    )
    assert "[rank 0] rank 0 was here" in out and "[rank 1] rank 1 was here" in out, "rank output is captured"
    assert "in test_a_crashes" in out, "the crash report carries the other rank's stack"
    assert "in test_b_hangs" in out, "a hung rank's Python stack is in the report"
    assert "in test_b_outlives_pytest_timeout" in out, "so is one that pytest-timeout interrupted"
    assert "rank 0 of 2 left the class:" in out and "no-such-backend" in out, "the group's error, at once"
    assert "TORCH TESTS: 15 pooled, 0 on torch's own spawn path" in out


class _OwnSpawn(MultiProcessTestCase):
    def _spawn_processes(self):
        """A class starting its ranks its own way."""


class _OwnCheck(MultiProcessTestCase):
    def _check_return_codes(self, fn, elapsed_time):
        """A class judging its ranks its own way."""


class _OwnContinuousSpawn(MultiProcContinuousTest):
    @classmethod
    def _spawn_processes(cls, world_size):
        """A continuous class starting its ranks its own way."""


def test_classes_that_replace_torchs_start_or_join_are_not_pooled():
    assert fallback_reason(MultiProcessTestCase) is None
    assert fallback_reason(_OwnSpawn) == "the class overrides torch's _spawn_processes"
    assert fallback_reason(_OwnCheck) == "the class overrides torch's _check_return_codes"
    assert fallback_reason(MultiProcContinuousTest) is None
    assert fallback_reason(_OwnContinuousSpawn) == "the class overrides torch's _spawn_processes"


TIERED = """
import pytest
import torch
import torch.distributed as dist
from torch.testing._internal.common_distributed import MultiProcContinuousTest, MultiProcessTestCase


class ThreeRanks(MultiProcessTestCase):
    world_size = 3

    def setUp(self):
        super().setUp()
        self._spawn_processes()

    def test_three(self):
        assert 0 <= self.rank < self.world_size


@pytest.mark.tiers("multigpu")
class FourByProperty(ThreeRanks):
    @property
    def world_size(self):
        return 4


@pytest.mark.tiers("cpu")
class CpuOnly(ThreeRanks):
    def test_cpu(self):
        pass


{gloo}

class TwoRanksAllClass(Gloo):
    def test_a(self):
        self.all_reduce_ranks()

    def test_b(self):
        self.all_reduce_ranks()
"""


def test_torch_tests_take_multi_rank_tiers_and_are_sized_by_world_size(pytester, tmp_path):
    pytester.makepyfile(test_tiered=TIERED.format(gloo=GLOO))
    listed = tmp_path / "inventory.json"
    result = pytester.runpytest(
        "--collect-only",
        "-q",
        "--pool-torch-tests",
        "-p",
        "no:cacheprovider",
        f"--harness-inventory={listed}",
    )
    assert result.ret == 0, result.stdout.str()
    entries = {(e["id"].split("::", 1)[1], e["tier"], e["gpus"]) for e in json.loads(listed.read_text())}
    assert entries == {
        ("ThreeRanks::test_three", "cpu", 0),
        ("ThreeRanks::test_three", "multigpu", 3),
        ("FourByProperty::test_three", "multigpu", 4),
        ("CpuOnly::test_three", "cpu", 0),
        ("CpuOnly::test_cpu", "cpu", 0),
        ("TwoRanksAllClass::test_a", "cpu", 0),
        ("TwoRanksAllClass::test_a", "multigpu", 2),
        ("TwoRanksAllClass::test_b", "cpu", 0),
        ("TwoRanksAllClass::test_b", "multigpu", 2),
    }


def test_torch_tests_lease_one_gpu_per_rank_in_a_gpu_tier(pytester, monkeypatch, tmp_path):
    for name in (devices.PHYSICAL_GPUS_ENV, devices.HOME_GPU_ENV, "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(devices.FAKE_GPUS_ENV, "8")
    monkeypatch.setenv(devices.LEASE_DIR_ENV, str(tmp_path / "locks"))
    monkeypatch.setenv(devices.LEASE_LOG_ENV, str(tmp_path / "leases.jsonl"))
    pytester.makepyfile(test_tiered=TIERED.format(gloo=GLOO))
    result = pytester.runpytest("--tier", "multigpu", "--pool-torch-tests", "-p", "no:cacheprovider", "-rA")
    result.assert_outcomes(passed=4, deselected=2)
    leases = [json.loads(line) for line in (tmp_path / "leases.jsonl").read_text().splitlines()]
    taken = {(e["holder"].split("::", 1)[1], len(e["devices"])) for e in leases if e["event"] == "acquire"}
    # The continuous class holds its two devices from its first test to its end.
    assert taken == {
        ("ThreeRanks::test_three", 3),
        ("FourByProperty::test_three", 4),
        ("TwoRanksAllClass::test_a", 2),
    }
