"""Can this interpreter run the tests as it is? For pre-provisioned interpreters.

A GPU image often brings its own CUDA build of torch (NVIDIA's PyTorch
containers, a cluster module, a lab's base image) and no network. `make
test-gpu VENV=` runs there: this check enforces the torch floor from
pyproject.toml, never replaces torch, installs only missing test
dependencies (and says so), and goes on without the optional ones when the
package index cannot be reached.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import subprocess
import sys
from pathlib import Path

try:
    from packaging.requirements import Requirement
except ImportError:  # pip vendors it where packaging itself is absent
    from pip._vendor.packaging.requirements import Requirement

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
# Without these no tier runs; the rest of the test extra serves the features named here.
ESSENTIAL = ("torch", "pytest", "pytest-xdist")
SERVES = {
    "numpy": "torch.distributed.checkpoint: the FSDP checkpoint tests fail without it",
    "pytest-timeout": "the per-test timeout in pyproject.toml",
    "pytest-split": "CI shards (--splits)",
    "pytest-rerunfailures": "reruns and the flaky report (--reruns)",
    "pyyaml": "the CI workflow tests (cpu tier only)",
    "nvidia-ml-py": "GPU hygiene: the check that leased GPUs hold no foreign memory",
}


def requirements(pyproject: Path = PYPROJECT) -> list[Requirement]:
    """The project's runtime dependencies and its `test` extra, as pyproject.toml states them."""
    project = tomllib.loads(pyproject.read_text())["project"]
    return [
        Requirement(text) for text in (*project["dependencies"], *project["optional-dependencies"]["test"])
    ]


def installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def unmet(reqs: list[Requirement], version_of=installed_version) -> dict[str, str]:
    """{requirement: what is installed} for every requirement not satisfied."""
    found = {}
    for req in reqs:
        version = version_of(req.name)
        if version is None or not req.specifier.contains(version.split("+")[0], prereleases=True):
            found[str(req)] = version or "missing"
    return found


def main(install: bool, reqs: list[Requirement] | None = None, version_of=installed_version) -> int:
    reqs = requirements() if reqs is None else reqs
    torch = next(r for r in reqs if r.name == "torch")
    others = [r for r in reqs if r.name != "torch"]
    torch_version = version_of("torch")
    if unmet([torch], version_of):
        print(
            f"provision: this interpreter ({sys.executable}) has torch {torch_version or 'missing'}; the tests need "
            f"{torch} (pyproject.toml). Install a torch build for this host; it is never replaced here.",
            file=sys.stderr,
        )
        return 2
    missing = unmet(others, version_of)
    if missing and install:
        print(f"provision: installing what this interpreter lacks: {', '.join(missing)}", flush=True)
        pip = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--retries",
            "1",
            "--timeout",
            "15",
            *missing,
        ]
        if subprocess.run(pip, check=False).returncode != 0:
            print("provision: could not install them (no package index reachable?)", file=sys.stderr)
        importlib.invalidate_caches()
        missing = unmet(others, version_of)
    essential = [spec for spec in missing if Requirement(spec).name in ESSENTIAL]
    if essential:
        print(f"provision: cannot run the tests without {', '.join(essential)}", file=sys.stderr)
        return 2
    for spec, have in missing.items():
        serves = SERVES.get(Requirement(spec).name, "optional features")
        print(f"provision: going on without {spec} (have: {have}); it serves {serves}", file=sys.stderr)
    print(f"provision: {sys.executable} with torch {torch_version} is ready")
    return 0
