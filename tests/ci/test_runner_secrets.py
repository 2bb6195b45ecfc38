"""Secrets stay out of command lines in the runner scripts: any local user reads another
process's arguments in /proc/<pid>/cmdline, so a token passed to curl or docker as an
argument is a token given away (issue 23, part 4). Only bash builtins, which start no
process, may see one; files and stdin carry it to the rest."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = [pytest.mark.tiers("cpu"), pytest.mark.timeout(60)]

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted((ROOT / "docker").rglob("*.sh"))
# Builtins run inside bash: their arguments never reach a process's cmdline.
BUILTINS = {
    "printf",
    "echo",
    ":",
    "local",
    "export",
    "read",
    "[",
    "test",
    "if",
    "then",
    "elif",
    "while",
    "do",
}
SECRET_NAME = re.compile(r"\$\{?(?P<name>\w*(?:token|jit|secret|password|credential)\w*)", re.I)
CONTENT_OF_A_FILE = re.compile(r"\$\((?:cat\b|<)")


def commands(text: str) -> list[str]:
    """The simple commands of a script: continuation lines joined, comments dropped, split at
    pipes, lists and `$(`...`)` openings (each substitution is its own command)."""
    joined = re.sub(r"\\\n\s*", " ", text)
    lines = [line.split(" #")[0].strip() for line in joined.splitlines() if not line.lstrip().startswith("#")]
    return [part.strip() for line in lines for part in re.split(r"\|\|?|&&|;|\$\(", line) if part.strip()]


def leaks(text: str) -> list[str]:
    """Commands that start a process with a secret in its arguments."""
    found = []
    for command in commands(text):
        words = command.split()
        first = words[0]
        if first in BUILTINS or re.fullmatch(r"\w+=.*", first):
            continue
        names = [m["name"] for m in SECRET_NAME.finditer(command) if not m["name"].upper().endswith("_FILE")]
        if "Authorization" in command or names or CONTENT_OF_A_FILE.search(command):
            found.append(command)
    return found


def test_the_runner_scripts_pass_no_secret_on_a_command_line():
    assert SCRIPTS, "no runner scripts found"
    assert {path.name: leaks(path.read_text()) for path in SCRIPTS} == {path.name: [] for path in SCRIPTS}


@pytest.mark.parametrize(
    "line",
    [
        'curl -X POST -H "Authorization: Bearer $(cat "$GITHUB_TOKEN_FILE")" "$api"',
        'curl -H "Accept: x" \\\n    -H "Authorization: Bearer $token" "$api"',
        'exec ./run.sh --jitconfig "$RUNNER_JITCONFIG"',
        'docker run --env RUNNER_JITCONFIG="$jit" image',
        'gh api -H "X-Token: ${GH_TOKEN}" /user',
    ],
)
def test_the_check_sees_a_secret_in_an_argument(line):
    assert leaks(line)


def test_the_check_lets_builtins_files_and_stdin_carry_secrets():
    safe = (
        ': "${GITHUB_TOKEN_FILE:?file}"\n'
        'printf \'header = "Authorization: Bearer %s"\\n\' "$(<"$GITHUB_TOKEN_FILE")" |\n'
        '    curl --config - -X POST "$api"  # reads the header on stdin\n'
        'printf \'ACTIONS_RUNNER_INPUT_JITCONFIG=%s\\n\' "$jit" > "$envfile"\n'
        'docker run --env-file "$envfile" image\n'
    )
    assert leaks(safe) == []


def test_make_lint_runs_shellcheck_on_every_runner_script():
    lint = re.search(r"^lint:.*?(?=^\S)", (ROOT / "Makefile").read_text(), re.M | re.S)
    assert lint is not None and "shellcheck $$(find docker -name '*.sh')" in lint.group(0)
