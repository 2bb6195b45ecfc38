"""An inner pytest run in a process of its own, for self-tests that need what an in-process
pytester run cannot give: xdist workers, leases held across processes, processes left behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def run_pytest(
    cwd: Path, *args: str, env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess[str]:
    """`python -m pytest -q -p no:cacheprovider ARGS` in `cwd`, its output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
