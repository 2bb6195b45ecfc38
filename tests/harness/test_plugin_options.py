"""The plugin's command-line options: --gpu-range (how CI sizes GPU jobs) and the worker thread share."""

from __future__ import annotations

import os
import re
import sys

import pytest
import torch

from harness import devices, options, plugin
from tests.documented import quoted_help, unwrapped

# A self-test fails within 60 s when what it checks hangs, not at the suite-wide 600 s.
pytestmark = [pytest.mark.tiers("cpu"), pytest.mark.timeout(60)]

SIZED = """
import pytest

@pytest.mark.world_size([2, 3, 4, 8])
def test_ranks():
    pass

def test_one(tier):
    pass
"""


@pytest.fixture
def eight_fake_gpus(monkeypatch, tmp_path):
    monkeypatch.setenv(devices.FAKE_GPUS_ENV, "8")
    monkeypatch.setenv(devices.LEASE_DIR_ENV, str(tmp_path / "leases"))
    monkeypatch.delenv(devices.PHYSICAL_GPUS_ENV, raising=False)
    monkeypatch.delenv(devices.HOME_GPU_ENV, raising=False)


def _selected(pytester: pytest.Pytester, *args: str) -> list[str]:
    result = pytester.runpytest("--collect-only", "-q", "-p", "no:cacheprovider", *args)
    assert result.ret == pytest.ExitCode.OK, result.stdout.str() + result.stderr.str()
    return [line.split("::")[1] for line in result.outlines if "::" in line]


def test_gpu_range_selects_the_gpu_tier_tests_a_runner_class_holds(pytester, eight_fake_gpus):
    pytester.makepyfile(test_sized=SIZED)
    assert _selected(pytester, "--tier", "multigpu", "--gpu-range", "3-4") == [
        "test_ranks[ws3-multigpu]",
        "test_ranks[ws4-multigpu]",
    ]
    assert _selected(pytester, "--tier", "multigpu", "--gpu-range", " 8-8 ") == ["test_ranks[ws8-multigpu]"]
    assert _selected(pytester, "--tier", "gpu,multigpu", "--gpu-range", "1-2") == [
        "test_ranks[ws2-multigpu]",
        "test_one[gpu]",
    ]
    # The cpu tier needs no GPU and is never narrowed by a range.
    assert _selected(pytester, "--tier", "cpu", "--gpu-range", "3-3") == [
        "test_ranks[ws2-cpu]",
        "test_ranks[ws3-cpu]",
        "test_ranks[ws4-cpu]",
        "test_ranks[ws8-cpu]",
        "test_one[cpu]",
    ]


@pytest.mark.parametrize("text", ["4-3", "3", "a-b", "-1-2"])
def test_a_bad_gpu_range_is_named(text):
    with pytest.raises(pytest.UsageError) as error:
        options.parse_gpu_range(text)
    assert str(error.value) == f"--gpu-range {text!r}: expected LO-HI with 0 <= LO <= HI, e.g. 3-4"


def test_gpu_range_bounds_are_inclusive_and_may_be_equal():
    assert options.parse_gpu_range("0-0") == (0, 0)
    assert options.parse_gpu_range("2-16") == (2, 16)
    assert options.parse_gpu_range(None) is None


def test_xdist_workers_share_the_cores_torch_threads_included(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    before = torch.get_num_threads()
    try:
        plugin.share_cpu_threads(3)
        assert torch.get_num_threads() == 2
        plugin.share_cpu_threads(16)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_a_worker_without_torch_yet_leaves_its_share_for_torch_to_read(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.delitem(sys.modules, "torch")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    plugin.share_cpu_threads(4)
    assert os.environ["OMP_NUM_THREADS"] == "2"
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's choice stands
    plugin.share_cpu_threads(4)
    assert os.environ["OMP_NUM_THREADS"] == "3"
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    monkeypatch.delenv("OMP_NUM_THREADS")
    plugin.share_cpu_threads(2)
    assert os.environ["OMP_NUM_THREADS"] == "1"


def test_the_harness_acts_only_when_the_ini_or_the_command_line_asks(pytester, eight_fake_gpus, tmp_path):
    (pytester.path / "tox.ini").unlink()
    pytester.makepyfile(test_x="import pytest\n\n@pytest.mark.tiers('cpu')\ndef test_x():\n    pass\n")
    assert _selected(pytester, "-p", "no:cacheprovider") == ["test_x"]
    assert _selected(pytester, "--tier", "cpu") == ["test_x[cpu]"]
    listed = tmp_path / "inventory.json"
    assert _selected(pytester, f"--harness-inventory={listed}") == ["test_x[cpu]"]
    assert listed.exists()


def test_an_unreadable_quarantine_list_stops_the_run_naming_it(pytester, eight_fake_gpus):
    pytester.makeini("[pytest]\nharness = true\nharness_quarantine = lists/quarantine.toml\n")
    pytester.makepyfile(test_x="def test_x(tier):\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert result.stderr.lines[0].startswith(
        f"ERROR: quarantine list {pytester.path / 'lists' / 'quarantine.toml'}: [Errno 2] No such file"
    )


def test_the_quarantine_list_is_found_next_to_the_ini_file_not_the_rootdir(pytester, eight_fake_gpus):
    ini = pytester.mkdir("config") / "pytest.ini"
    ini.write_text("[pytest]\nharness = true\nharness_quarantine = quarantine.toml\n")
    (ini.parent / "quarantine.toml").write_text("ready_after = 0\n")
    pytester.makepyfile(test_x="def test_x(tier):\n    pass\n")
    result = pytester.runpytest("-c", str(ini), "--rootdir", str(pytester.path), "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert result.stderr.lines[0].startswith(f"ERROR: quarantine list {ini.parent / 'quarantine.toml'}: "), (
        result.stderr
    )


def test_help_shows_every_option_and_ini_key_as_the_docs_quote_it(pytester):
    """`pytest --help` is where users read what a harness option does; the docs quote it whole."""
    text = pytester.runpytest("--help", "-p", "no:cacheprovider").stdout.str()
    section = text[text.index("ac-harness test tiers (active with `harness = true` in the ini file):") :]
    section = section[: section.index("\n\n")]
    ini_keys = re.findall(r"^  (?:harness(?:_\w+)?|pool_torch_tests) \(.*?(?=^  \S)", text, re.M | re.S)
    assert len(ini_keys) == 3, ini_keys
    assert unwrapped(section + "".join(ini_keys)) == unwrapped(quoted_help("pytest --help"))


def test_each_part_of_the_harness_is_listed_by_name_in_the_trace_config(pytester):
    """`--trace-config` is where a user looks for which plugins took part in a run."""
    pytester.makepyfile(test_x="def test_x(tier):\n    pass\n")
    text = pytester.runpytest("--trace-config", "--tier", "cpu", "-p", "no:cacheprovider").stdout.str()
    for part in ("harness-tiers", "harness-ranks", "harness-reporting", "harness-summary"):
        assert re.search(rf"^    {part}\s+: <harness\.", text, re.M), part


class _XdistConfig:
    """What the controller check reads of a config: a worker has `workerinput`; `dist` is xdist's mode."""

    def __init__(self, dist: str | None, worker: bool) -> None:
        self.dist = dist  # None: xdist is not loaded, so there is no such option
        if worker:
            self.workerinput = {"workerid": "gw0", "workercount": 2}

    def getoption(self, name: str, default: object = None) -> object:
        return self.dist if name == "dist" and self.dist is not None else default


def test_only_theis_xdist_controller_is_taken_for_one():
    assert plugin.is_xdist_controller(_XdistConfig("load", worker=False))
    assert not plugin.is_xdist_controller(_XdistConfig("load", worker=True))
    assert not plugin.is_xdist_controller(_XdistConfig("no", worker=False))
    assert not plugin.is_xdist_controller(_XdistConfig(None, worker=False))  # -p no:xdist
