"""The quarantine list as read from its TOML file: what it accepts, and the error for what it does not."""

from __future__ import annotations

import pytest

from harness import quarantine

# A self-test fails within 60 s when what it checks hangs, not at the suite-wide 600 s.
pytestmark = [pytest.mark.tiers("cpu"), pytest.mark.timeout(60)]


@pytest.fixture
def listed(tmp_path):
    path = tmp_path / "quarantine.toml"

    def write(text: str):
        path.write_text(text)
        return path

    return write


ENTRY = '[[test]]\nid = "t.py::test_y"\nreason = "stalls"\nlink = "https://example.org/1"\n'


def test_a_list_reads_its_entries_and_ready_after(listed):
    path = listed("ready_after = 3\n" + ENTRY + ENTRY.replace("test_y", "test_z").replace("/1", "/2"))
    assert quarantine.load(path) == quarantine.Quarantine(
        (
            quarantine.QuarantinedTest("t.py::test_y", "stalls", "https://example.org/1"),
            quarantine.QuarantinedTest("t.py::test_z", "stalls", "https://example.org/2"),
        ),
        3,
    )


def test_an_empty_list_waits_ten_passes_before_calling_an_entry_ready(listed):
    assert quarantine.load(listed("")) == quarantine.Quarantine((), 10)


def test_an_entry_matches_its_id_and_each_of_its_parameters_only():
    entry = quarantine.QuarantinedTest("t.py::test_y", "stalls", "link")
    assert entry.matches("t.py::test_y") and entry.matches("t.py::test_y[cpu]")
    assert not entry.matches("t.py::test_y2") and not entry.matches("t.py::test_y2[cpu]")
    listed = quarantine.Quarantine((quarantine.QuarantinedTest("a", "r", "l"), entry), 1)
    assert listed.find("t.py::test_y[gpu]") is entry and listed.find("t.py::other") is None


@pytest.mark.parametrize("value", ["0", "-2", '"3"', "1.5", "true"])
def test_ready_after_must_be_a_positive_integer(listed, value):
    path = listed(f"ready_after = {value}\n")
    with pytest.raises(ValueError) as error:
        quarantine.load(path)
    shown = {"0": "0", "-2": "-2", '"3"': "'3'", "1.5": "1.5", "true": "True"}[value]
    assert str(error.value) == f"quarantine list {path}: ready_after={shown} must be a positive integer"


@pytest.mark.parametrize(
    ("entry", "missing"),
    [
        ('id = "t.py::x"\nreason = "r"\n', ["link"]),
        ('id = "t.py::x"\nreason = ""\nlink = 3\n', ["reason", "link"]),
        ('reason = "r"\nlink = "l"\n', ["id"]),
    ],
)
def test_an_incomplete_entry_is_named_by_its_position_and_missing_fields(listed, entry, missing):
    path = listed(ENTRY + "[[test]]\n" + entry)
    with pytest.raises(ValueError) as error:
        quarantine.load(path)
    assert str(error.value) == (
        f"quarantine list {path}: [[test]] entry 2 needs {missing} (non-empty strings)"
    )


def test_a_missing_or_malformed_file_is_named(listed, tmp_path):
    with pytest.raises(ValueError, match=rf"^quarantine list {tmp_path / 'nowhere.toml'}: .*No such file"):
        quarantine.load(tmp_path / "nowhere.toml")
    path = listed("[[test]\n")
    with pytest.raises(ValueError, match=rf"^quarantine list {path}: .*\(at line 1, column \d+\)$"):
        quarantine.load(path)
