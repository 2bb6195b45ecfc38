"""`make ... VENV=`: an interpreter that already has torch is checked, never re-provisioned."""

from __future__ import annotations

import pytest

from harness.ci import provision

# A self-test fails within 60 s when what it checks hangs, not at the suite-wide 600 s.
pytestmark = [pytest.mark.tiers("cpu"), pytest.mark.timeout(60)]

INSTALLED = {
    "torch": "2.11.0+cu130",
    "pytest": "8.3.0",
    "pytest-xdist": "3.6.1",
    "pytest-timeout": "2.3.1",
    "pytest-split": "0.10.0",
    "pytest-rerunfailures": "15.0",
    "pyyaml": "6.0.2",
    "numpy": "2.1.0",
}


def run(capsys, **versions):
    installed = {**INSTALLED, **versions}
    code = provision.main(install=False, version_of=lambda name: installed.get(name.lower()))
    return code, capsys.readouterr()


def test_a_ready_interpreter_passes_as_it_is(capsys):
    code, out = run(capsys)
    assert code == 0 and "with torch 2.11.0+cu130 is ready" in out.out


def test_torch_below_the_floor_is_refused_naming_the_floor(capsys):
    code, out = run(capsys, torch="2.7.1")
    assert code == 2
    assert "has torch 2.7.1; the tests need torch>=2.9 (pyproject.toml)" in out.err


def test_optional_plugins_may_be_missing(capsys):
    code, out = run(capsys, **{"pytest-split": None, "pytest-rerunfailures": None, "pyyaml": None})
    assert code == 0
    assert "going on without pytest-rerunfailures>=14 (have: missing); it serves reruns" in out.err


@pytest.mark.parametrize("missing", ["pytest", "pytest-xdist"])
def test_the_test_runner_itself_must_be_there(capsys, missing):
    code, out = run(capsys, **{missing: None})
    assert code == 2 and f"cannot run the tests without {missing}" in out.err
