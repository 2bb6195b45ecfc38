"""Recorded test durations: what a run records, how records merge, how much of a suite they cover."""

from __future__ import annotations

import json

import pytest

from harness.ci import durations, matrix

# A self-test fails within 60 s when what it checks hangs, not at the suite-wide 600 s.
pytestmark = [pytest.mark.tiers("cpu"), pytest.mark.timeout(60)]


def _report(nodeid: str, when: str, duration: float, outcome: str = "passed") -> pytest.TestReport:
    return pytest.TestReport(nodeid, ("t.py", 1, nodeid), {}, outcome, None, when, duration=duration)


class _Session:
    shouldstop = False


def test_a_test_records_setup_call_and_teardown_and_a_rerun_attempt_not_at_all(tmp_path):
    recorder = durations.Recorder(str(tmp_path / "out" / "durations.json"))
    for report in [
        _report("t.py::a", "setup", 0.25),
        _report("t.py::a", "call", 1.0),
        _report("t.py::a", "teardown", 0.125),
        _report("t.py::b", "call", 9.0, outcome="rerun"),
        _report("t.py::b", "call", 2.0),
        _report("t.py::b", "teardown", 0.0),
        _report("t.py::c", "call", 0.0),
        _report("t.py::c", "teardown", 0.0),
    ]:
        recorder.pytest_runtest_logreport(report)
    recorder.pytest_sessionfinish(_Session(), pytest.ExitCode.OK)
    assert (tmp_path / "out" / "durations.json").read_text() == (
        '{\n "t.py::a": 1.375,\n "t.py::b": 2.0,\n "t.py::c": 0.0\n}\n'
    )


def test_saved_records_are_sorted_and_rounded_to_milliseconds_and_load_back(tmp_path):
    path = tmp_path / "durations.json"
    durations.save(path, {"b": 0.12345, "a": 2.0})
    assert path.read_text() == '{\n "a": 2.0,\n "b": 0.123\n}\n'
    assert durations.load(path) == {"a": 2.0, "b": 0.123}


def test_loading_reads_numbers_as_seconds_and_a_missing_file_as_nothing(tmp_path):
    path = tmp_path / "durations.json"
    path.write_text(json.dumps({"a": 1, "b": "2.5"}))
    assert durations.load(path) == {"a": 1.0, "b": 2.5}
    assert durations.load(tmp_path / "absent.json") == {}


def test_a_malformed_durations_file_is_named(tmp_path):
    path = tmp_path / "durations.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match=rf"^durations file {path} is not JSON: Expecting property name"):
        durations.load(path)
    path.write_text("[1, 2]")
    with pytest.raises(ValueError) as error:
        durations.load(path)
    assert str(error.value) == f"durations file {path}: expected an object of test id -> seconds"


def test_fresh_records_win_in_order_and_only_collected_ids_are_kept():
    base = {"a": 1.0, "b": 2.0, "gone": 3.0}
    fresh = [{"b": 5.0, "c": 6.0}, {"c": 7.0}]
    assert durations.merge(base, fresh) == {"a": 1.0, "b": 5.0, "gone": 3.0, "c": 7.0}
    assert durations.merge(base, fresh, keep={"a", "b", "c"}) == {"a": 1.0, "b": 5.0, "c": 7.0}
    assert base == {"a": 1.0, "b": 2.0, "gone": 3.0}


def test_coverage_lists_the_ids_without_a_duration_and_their_share():
    assert durations.coverage(["a", "b", "c", "d"], {"b": 1.0, "x": 1.0}) == (["a", "c", "d"], 0.75)
    assert durations.coverage([], {"b": 1.0}) == ([], 0.0)


def test_the_matrix_warns_only_above_a_tenth_missing(tmp_path):
    from harness.ci import inventory

    entries = [inventory.TieredTest(f"t.py::t{i}[cpu]", "cpu", 0) for i in range(10)]
    entries.append(inventory.TieredTest("t.py::g[gpu]", "gpu", 1))  # GPU tiers are not sharded by duration
    path = tmp_path / "durations.json"
    durations.save(path, {f"t.py::t{i}[cpu]": 1.0 for i in range(9)})
    assert durations.MAX_MISSING_SHARE == 0.10
    assert matrix.duration_warning(entries, path) is None
    durations.save(path, {f"t.py::t{i}[cpu]": 1.0 for i in range(2, 10)})
    assert matrix.duration_warning(entries, path) == (
        f"2 of 10 CPU-tier tests (20%) have no duration in {path}; shards will be uneven. "
        "Refresh it with `make durations` (first missing: t.py::t0[cpu])"
    )


def test_a_run_with_record_durations_writes_every_executed_test(pytester):
    pytester.makeini("[pytest]\nharness = true\n")
    pytester.makepyfile(
        test_timed="import time\n\ndef test_plain():\n    pass\n\ndef test_tiered(tier):\n    time.sleep(0.05)\n"
    )
    out = pytester.path / "records" / "durations.json"
    result = pytester.runpytest("--tier", "cpu", "--record-durations", str(out), "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    recorded = durations.load(out)
    assert sorted(recorded) == ["test_timed.py::test_plain", "test_timed.py::test_tiered[cpu]"]
    assert recorded["test_timed.py::test_tiered[cpu]"] >= 0.05
