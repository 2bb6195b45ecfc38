"""The world_size marker at collection: the sizes it makes, the cpu-tier limit, and what it refuses."""

from __future__ import annotations

import pytest

from harness import devices, markers

# A self-test fails within 60 s when what it checks hangs, not at the suite-wide 600 s.
pytestmark = [pytest.mark.tiers("cpu"), pytest.mark.timeout(60)]


@pytest.fixture
def host(monkeypatch, tmp_path):
    monkeypatch.setenv(devices.FAKE_GPUS_ENV, "4")
    monkeypatch.setenv(devices.LEASE_DIR_ENV, str(tmp_path / "leases"))
    monkeypatch.delenv(devices.PHYSICAL_GPUS_ENV, raising=False)
    monkeypatch.delenv(devices.HOME_GPU_ENV, raising=False)


def _collect(pytester: pytest.Pytester, body: str) -> pytest.RunResult:
    pytester.makepyfile(test_marked="import pytest\n\n" + body)
    return pytester.runpytest("--collect-only", "-q", "-p", "no:cacheprovider")


def test_each_size_runs_in_each_multi_rank_tier_and_cpu_keeps_only_its_sizes(pytester, host):
    result = _collect(pytester, "@pytest.mark.world_size([2, 4], cpu=2)\ndef test_x(world_size):\n    pass\n")
    assert [line for line in result.outlines if "::" in line] == [
        "test_marked.py::test_x[ws2-cpu]",
        "test_marked.py::test_x[ws2-multigpu]",
        "test_marked.py::test_x[ws4-multigpu]",
    ]
    assert "3/4 tests collected (1 deselected)" in result.stdout.str()
    listed = _collect(pytester, "@pytest.mark.world_size(3, cpu=[1, 3])\ndef test_y():\n    pass\n")
    assert [line for line in listed.outlines if "::" in line] == [
        "test_marked.py::test_y[ws3-cpu]",
        "test_marked.py::test_y[ws3-multigpu]",
    ]


BAD = {
    "test_zero": "world_size(0)",
    "test_bool": "world_size(True)",
    "test_empty": "world_size([])",
    "test_text": "world_size('2')",
    "test_negative": "world_size([2, -1])",
    "test_float": "world_size(2.0)",
    "test_two_args": "world_size(2, 4)",
    "test_no_args": "world_size()",
    "test_million": "world_size(10**6)",
    "test_isolated_alone": "isolated",
}


def test_a_malformed_marker_stops_the_run_naming_the_test_and_what_it_takes(pytester, host):
    """Each marker error is one line naming the test, the marker and what it takes; no traceback, exit 4."""
    pytester.makepyfile(
        **{
            name: f"import pytest\n\n@pytest.mark.{mark}\ndef test_x():\n    pass\n"
            for name, mark in BAD.items()
        }
    )
    result = pytester.runpytest("--collect-only", "-q", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    takes = f"world_size takes an int from 1 to {markers.max_ranks()} or a list of them, got"
    for name, got in [
        ("test_zero", "0"),
        ("test_bool", "True"),
        ("test_empty", "[]"),
        ("test_text", "'2'"),
        ("test_negative", "[2, -1]"),
        ("test_float", "2.0"),
        ("test_million", "1000000"),
    ]:
        assert f"{markers.PREFIX}{name}.py::test_x: @pytest.mark.world_size: {takes} {got}" in result.outlines
    for name in ("test_two_args", "test_no_args"):
        assert (
            f"{markers.PREFIX}{name}.py::test_x: @pytest.mark.world_size: "
            "takes one argument (an int or a list) and optionally cpu=" in result.outlines
        )
    assert (
        f"{markers.PREFIX}test_isolated_alone.py::test_x: @pytest.mark.isolated: "
        "needs world_size(n) on the same test" in result.outlines
    )
    assert result.stdout.str().count(markers.PREFIX) == len(BAD)
    assert "Traceback" not in result.stdout.str() and not result.errlines


def test_a_bad_cpu_size_is_refused_naming_the_test(pytester, host):
    result = _collect(pytester, "@pytest.mark.world_size(2, cpu=0)\ndef test_x():\n    pass\n")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert (
        f"{markers.PREFIX}test_marked.py::test_x: @pytest.mark.world_size: cpu= takes an int from 1 to "
        f"{markers.max_ranks()} or a list of them, got 0" in result.outlines
    )
