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


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str]]:
    """`python -m harness ...` in this process: its exit code and its stderr lines."""
    from harness import __main__ as harness_main
    from harness import cli

    code = cli.run(harness_main.main, harness_main.PROG, list(argv))
    return code, capsys.readouterr().err.splitlines()


def _merge(capsys, record, base, listed) -> tuple[int, list[str]]:
    """merge-durations as CI calls it: the record over the base, in place, kept to the inventory."""
    args = [str(record), "--base", str(base), "--out", str(base), "--inventory", str(listed)]
    return _cli(capsys, "merge-durations", *args)


@pytest.fixture
def files(tmp_path):
    """A base file CI shards on, a good fresh record and an inventory naming both tests."""
    base, record, listed = tmp_path / "base.json", tmp_path / "fresh.json", tmp_path / "inventory.json"
    durations.save(base, {"t.py::a[cpu]": 1.0, "t.py::b[cpu]": 2.0})
    durations.save(record, {"t.py::a[cpu]": 3.0})
    listed.write_text(json.dumps([{"id": f"t.py::{n}[cpu]", "tier": "cpu", "gpus": 0} for n in "ab"]))
    return base, record, listed


@pytest.mark.parametrize(
    ("bad", "content", "says"),
    [
        ("inventory", "[]", "the inventory lists no test; refusing to drop every duration"),
        ("inventory", "{}", "expected a list of tests, got dict"),
        ("inventory", '[{"id": 1, "tier": "tpu", "gpus": 0}]', "expected a test id and one of the tiers"),
        ("record", "{}", "a fresh record holds no durations; refusing to merge it"),
        ("record", None, "does not exist"),
        ("record", '{"t.py::a[cpu]": NaN}', "'t.py::a[cpu]' has nan; expected finite, non-negative seconds"),
        ("record", '{"t.py::a[cpu]": Infinity}', "has inf; expected finite, non-negative seconds"),
        ("record", '{"t.py::a[cpu]": -1}', "has -1; expected finite, non-negative seconds"),
        ("record", '{"t.py::a[cpu]": null}', "has None; expected finite, non-negative seconds"),
        ("record", '{"t.py::a[cpu]": {"s": 1}}', "has {'s': 1}; expected finite, non-negative seconds"),
        ("record", "dir", "cannot read it: Is a directory"),
        ("base", '{"t.py::a[cpu]": true}', "has True; expected finite, non-negative seconds"),
    ],
)
def test_merge_durations_refuses_a_bad_input_in_one_line_and_leaves_the_output_alone(
    files, capsys, bad, content, says
):
    base, record, listed = files
    target = {"base": base, "record": record, "inventory": listed}[bad]
    before = base.read_text()
    if content is None:
        target.unlink()
    elif content == "dir":
        target.unlink()
        target.mkdir()
    else:
        target.write_text(content)
    if bad == "base":
        before = content
    code, err = _merge(capsys, record, base, listed)
    assert code == 2 and len(err) == 1 and err[0].startswith("python -m harness merge-durations: error: "), (
        err
    )
    assert says in err[0]
    assert (base.read_text() if base.is_file() else None) == before


def test_merge_durations_lays_a_good_record_over_the_base(files, capsys):
    base, record, listed = files
    code, _ = _merge(capsys, record, base, listed)
    assert code == 0 and durations.load(base) == {"t.py::a[cpu]": 3.0, "t.py::b[cpu]": 2.0}


def test_matrix_with_a_folder_as_github_output_or_a_bad_inventory_is_one_line(files, capsys, tmp_path):
    base, _, listed = files
    code, err = _cli(
        capsys,
        "matrix",
        "--inventory",
        str(listed),
        "--durations",
        str(base),
        "--github-output",
        str(tmp_path),
    )
    assert code == 2 and len(err) == 1 and "Is a directory" in err[0], err
    listed.write_text('[{"id": "t.py::a[cpu]", "tier": "cpu", "gpus": "2"}]')
    code, err = _cli(capsys, "matrix", "--inventory", str(listed))
    assert code == 2 and err == [
        f"python -m harness matrix: error: inventory {listed}: gpus must be a non-negative int, "
        "got {'id': 't.py::a[cpu]', 'tier': 'cpu', 'gpus': '2'}"
    ]


CUT_SHORT = """
import pytest

def test_a():
    pass

def test_b():
    pytest.exit("stands in for Ctrl-C: the test never reaches its teardown")
"""


def test_a_run_cut_short_merges_its_finished_tests_into_the_record_and_says_so(pytester):
    """Ctrl-C used to replace a 458-entry record with 2 entries, one a false 0.001 s."""
    record = pytester.path / "durations.json"
    durations.save(record, {"test_cut.py::test_a": 9.0, "test_cut.py::test_b": 7.0, "other.py::t": 5.0})
    pytester.makepyfile(test_cut=CUT_SHORT)
    result = pytester.runpytest("--tier", "cpu", "--record-durations", str(record), "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    merged = durations.load(record)
    assert merged["other.py::t"] == 5.0 and merged["test_cut.py::test_b"] == 7.0, "kept from before"
    assert merged["test_cut.py::test_a"] < 9.0, "the finished test's fresh duration"
    result.stdout.fnmatch_lines(
        [
            "--record-durations: the run was cut short; 1 finished tests' durations merged into *, "
            "whose other 2 entries are kept"
        ]
    )
