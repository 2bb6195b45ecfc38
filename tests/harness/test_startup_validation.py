"""Every harness option, environment variable, marker argument and checked-in file, given one
bad value each: one line naming it, what is allowed and where it came from, pytest's
usage-error exit (4), and no traceback, before any test runs (issue 23, part 1)."""

from __future__ import annotations

import tempfile

import pytest

from harness import devices, markers, options, safe_paths, validation

pytestmark = [pytest.mark.tiers("cpu"), pytest.mark.timeout(120)]

# option -> (bad arguments, the start of the one error line)
BAD_OPTIONS = {
    "--tier": (["--tier", "tpu"], "ERROR: --tier 'tpu': unknown tier"),
    "--gpu-schedule": (["--gpu-schedule", "fast"], "ERROR: --gpu-schedule 'fast': choose from"),
    "--schedule-durations": (
        ["--schedule-durations", "missing.json"],
        "ERROR: --schedule-durations 'missing.json': durations file",
    ),
    "--dist-timeout": (["--dist-timeout", "inf"], "ERROR: --dist-timeout inf: must be a number of seconds"),
    "--harness-seed": (
        ["--harness-seed", str(2**32)],
        "ERROR: --harness-seed 4294967296: must be an integer",
    ),
    "--gpu-range": (["--gpu-range", "4-3"], "ERROR: --gpu-range '4-3': expected LO-HI"),
    "--record-durations": (["--record-durations", "."], "ERROR: --record-durations '.': . is a directory"),
    "--harness-inventory": (["--harness-inventory", "."], "ERROR: --harness-inventory '.': . is a directory"),
}
# variable -> (bad value, the start of the one error line); "{dir}" / "{file}" are made per test
BAD_ENV = {
    devices.FAKE_GPUS_ENV: ("2.5", "ERROR: HARNESS_FAKE_GPUS='2.5' must be an integer from 0 to 16"),
    devices.LEASE_TIMEOUT_ENV: ("abc", "ERROR: HARNESS_LEASE_TIMEOUT='abc': must be a number of seconds"),
    devices.LEASE_DIR_ENV: (
        "{file}",
        "ERROR: HARNESS_LEASE_DIR='{file}': {file} exists and is not a directory",
    ),
    devices.LEASE_LOG_ENV: ("{dir}", "ERROR: HARNESS_LEASE_LOG='{dir}': {dir} is a directory"),
    validation.STEP_SUMMARY_ENV: ("{dir}", "ERROR: GITHUB_STEP_SUMMARY='{dir}': {dir} is a directory"),
}
# marker call -> what the line says it takes
BAD_MARKERS = {
    "gpus(-1)": "@pytest.mark.gpus: takes one int from 1 to 16, got -1",
    "gpus(0)": "@pytest.mark.gpus: takes one int from 1 to 16, got 0",
    "gpus(2.5)": "@pytest.mark.gpus: takes one int from 1 to 16, got 2.5",
    "gpus('x')": "@pytest.mark.gpus: takes one int from 1 to 16, got 'x'",
    "gpus()": "@pytest.mark.gpus: takes one int from 1 to 16, got gpus()",
    "gpus(17)": "@pytest.mark.gpus: takes one int from 1 to 16, got 17",
    "tiers('cpu,gpu')": "@pytest.mark.tiers: takes tier names, each one of ['cpu', 'gpu', 'multigpu'], got",
    "tiers()": "@pytest.mark.tiers: takes tier names, each one of ['cpu', 'gpu', 'multigpu'], got tiers()",
    "world_size(10**6)": "@pytest.mark.world_size: world_size takes an int from 1 to",
    "world_size(2, cpu=[2, 0])": "@pytest.mark.world_size: cpu= takes an int from 1 to",
    "isolated": "@pytest.mark.isolated: needs world_size(n) on the same test",
}
BAD_QUARANTINE = {
    'test = "x"': "`test` must be [[test]] tables, got 'x'",
    "test = [1]": "`test` must be [[test]] tables, got [1]",
}


@pytest.fixture
def plain_host(monkeypatch):
    """No GPU (an empty recorded list, as a GPU-less host records), no harness variable set."""
    for name in (*validation.ENV_CHECKS, devices.HOME_GPU_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(devices.PHYSICAL_GPUS_ENV, "")


def _one_line_usage_error(result: pytest.RunResult) -> str:
    """The run's single error line, after checking it is a usage error without a traceback."""
    text = result.stdout.str() + result.stderr.str()
    assert result.ret == pytest.ExitCode.USAGE_ERROR, text
    assert "Traceback" not in text and "INTERNALERROR" not in text, text
    lines = [
        line for line in result.outlines + result.errlines if line.startswith(("ERROR: ", markers.PREFIX))
    ]
    assert len(lines) == 1, text
    return lines[0]


def _collect(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    pytester.makepyfile(test_x="def test_x(tier):\n    pass\n")
    return pytester.runpytest("--collect-only", "-q", "-p", "no:cacheprovider", *args)


class _OptionNames:
    """Stands in for pytest's parser to list the options the harness adds that take a value
    (a flag such as --pool-torch-tests has no bad value)."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def addini(self, *args: object, **kwargs: object) -> None:
        pass

    def getgroup(self, *args: object, **kwargs: object) -> _OptionNames:
        return self

    def addoption(self, name: str, **kwargs: object) -> None:
        if kwargs.get("action") not in ("store_true", "store_false"):
            self.names.append(name)


def test_every_option_variable_and_marker_has_a_bad_value_here():
    parser = _OptionNames()
    options.add_options(parser)
    assert sorted(BAD_OPTIONS) == sorted(parser.names)
    assert sorted(BAD_ENV) == sorted(validation.ENV_CHECKS)
    assert {call.split("(")[0] for call in BAD_MARKERS} == set(options.MARKERS)


@pytest.mark.parametrize("option", BAD_OPTIONS)
def test_a_bad_option_is_one_usage_error_line(pytester, plain_host, option):
    args, expected = BAD_OPTIONS[option]
    assert _one_line_usage_error(_collect(pytester, *args)).startswith(expected)


@pytest.mark.parametrize("name", BAD_ENV)
def test_a_bad_environment_variable_is_one_usage_error_line(
    pytester, plain_host, monkeypatch, tmp_path, name
):
    folder, file = tmp_path / "a-dir", tmp_path / "a-file"
    folder.mkdir()
    file.write_text("")
    value, expected = (text.format(dir=folder, file=file) for text in BAD_ENV[name])
    monkeypatch.setenv(name, value)
    line = _one_line_usage_error(_collect(pytester))
    assert line.startswith(expected) and line.endswith("(from the environment)"), line


@pytest.mark.parametrize("call", BAD_MARKERS)
def test_a_bad_marker_argument_is_one_usage_error_line_at_collection(pytester, plain_host, call):
    takes = "" if call.startswith(("world_size", "isolated")) else "tier"
    pytester.makepyfile(test_marked=f"import pytest\n\n@pytest.mark.{call}\ndef test_m({takes}):\n    pass\n")
    result = pytester.runpytest("--collect-only", "-q", "-p", "no:cacheprovider")
    line = _one_line_usage_error(result)
    assert line.startswith(f"{markers.PREFIX}test_marked.py::test_m: {BAD_MARKERS[call]}"), line


@pytest.mark.parametrize("entry", BAD_QUARANTINE)
def test_a_quarantine_list_of_the_wrong_shape_is_one_usage_error_line(pytester, plain_host, entry):
    pytester.makeini("[pytest]\nharness = true\nharness_quarantine = quarantine.toml\n")
    (pytester.path / "quarantine.toml").write_text(entry + "\n")
    line = _one_line_usage_error(_collect(pytester))
    assert line == f"ERROR: quarantine list {pytester.path / 'quarantine.toml'}: {BAD_QUARANTINE[entry]}"


@pytest.mark.parametrize("ini", ["harness = maybe", "harness = true\npool_torch_tests = maybe"])
def test_a_bad_ini_switch_is_one_usage_error_line_naming_the_key_and_the_file(pytester, plain_host, ini):
    pytester.makeini(f"[pytest]\n{ini}\n")
    key = ini.splitlines()[-1].split(" =")[0]
    assert _one_line_usage_error(_collect(pytester)) == (
        f"ERROR: ini key {key} in {pytester.path / 'tox.ini'}: invalid truth value 'maybe'; use true or false"
    )


def test_a_durations_file_pytest_split_would_choke_on_is_one_usage_error_line(pytester, plain_host):
    (pytester.path / "durations.json").write_text('{"test_x.py::test_x[cpu]": -1}')
    result = _collect(pytester, "--splits", "2", "--group", "1", "--durations-path", "durations.json")
    assert _one_line_usage_error(result) == (
        "ERROR: --durations-path (pytest-split): durations file durations.json: 'test_x.py::test_x[cpu]' "
        "has -1; expected finite, non-negative seconds"
    )


def test_a_requested_tier_that_cannot_run_is_an_error_even_beside_one_that_can(pytester, plain_host):
    """Issue 24, item 6: `--tier cpu,gpu` without a GPU must not report the cpu tier green."""
    line = _one_line_usage_error(_collect(pytester, "--tier", "cpu,gpu"))
    assert line == (
        "ERROR: requested tier cannot run on this machine: tier 'gpu' needs at least 1 GPU(s); "
        "this machine has no CUDA device. Refusing to report green."
    )


def test_under_xdist_a_marker_error_is_a_usage_error_too_never_an_internal_error(pytester, plain_host):
    """Workers collect; a usage error raised in one used to reach the controller as an INTERNALERROR."""
    pytester.makepyfile(
        test_argument="import pytest\n\n@pytest.mark.gpus(0)\ndef test_m(tier):\n    pass\n",
        test_spelling="import pytest\n\n@pytest.mark.world_sise(2)\ndef test_m(tier):\n    pass\n",
    )
    result = pytester.runpytest(
        "-n", "1", "-p", "no:cacheprovider", "-W", "ignore::pytest.PytestUnknownMarkWarning"
    )
    text = result.stdout.str() + result.stderr.str()
    assert result.ret == pytest.ExitCode.USAGE_ERROR, text
    assert "INTERNALERROR" not in text and "Traceback" not in text, text
    assert (
        f"{markers.PREFIX}test_argument.py::test_m: @pytest.mark.gpus: takes one int from 1 to 16, got 0"
        in text
    )
    assert f"{markers.PREFIX}test_spelling.py::test_m[cpu]: unknown marker 'world_sise'" in text


def test_a_rank_log_folder_another_user_could_write_in_stops_the_run_at_start(
    pytester, plain_host, monkeypatch, tmp_path
):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    planted = safe_paths.user_temp_dir(safe_paths.RANK_LOGS_DIR)
    planted.mkdir()
    planted.chmod(0o777)
    assert _one_line_usage_error(_collect(pytester)) == (
        f"ERROR: rank-log folder (in the temp dir, per user): {planted} has mode 0777: others can write "
        "in it; it must be 0700"
    )
