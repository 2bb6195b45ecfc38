"""The installed package stands alone: no module reaches into the test tree or the checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# A self-test fails within 60 s when what it checks hangs, not at the suite-wide 600 s.
pytestmark = [pytest.mark.tiers("cpu"), pytest.mark.timeout(60)]

ROOT = Path(__file__).resolve().parents[2]
IMPORT_ALL = """
import importlib, pkgutil, sys, harness, ac, ackit, harness.env
assert harness.__file__.startswith({site!r}), harness.__file__
# torch._dynamo costs over a second to import: no process pays it for importing ac or for
# the tier fixture (every rank unpickles one), only one that compiles or plans a budget.
assert "torch._dynamo" not in sys.modules, "importing ac or harness.env imported torch._dynamo"
for package in (harness, ac, ackit):
    for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if not module.name.endswith(".__main__"):
            importlib.import_module(module.name)
"""


def test_a_plain_install_imports_every_module_and_runs_the_cli_from_anywhere(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    for package in ("ac", "ackit", "harness"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    site = tmp_path / "site"
    pip = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
    ]
    subprocess.run([*pip, "--target", str(site), str(source)], check=True, capture_output=True, timeout=45)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    for args in (
        ["-c", IMPORT_ALL.format(site=str(site))],
        ["-m", "harness", "gpu-tiers"],
        ["-m", "ackit", "report", "--help"],
    ):
        run = subprocess.run([sys.executable, *args], cwd=elsewhere, env=env, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
