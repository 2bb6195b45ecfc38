"""Nothing the harness starts outlives pytest: pools, ranks, the forkserver, its resource tracker."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest

from tests.harness.inner_pytest import run_pytest

pytestmark = [pytest.mark.tiers("cpu"), pytest.mark.timeout(120)]

RANKED = """
import pytest

@pytest.mark.world_size(2)
def test_ranks(tier):
    pass
"""


def _tagged(tag: str) -> list[int]:
    """Processes whose environment carries `tag`: everything the run started inherits it."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if tag.encode() in (proc / "environ").read_bytes():
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


@pytest.mark.parametrize("workers", [[], ["-n", "1"]], ids=["in-process", "xdist"])
def test_no_process_of_the_run_is_alive_soon_after_pytest_returns(tmp_path, workers):
    (tmp_path / "pytest.ini").write_text("[pytest]\nharness = true\n")
    (tmp_path / "test_ranked.py").write_text(RANKED)
    tag = f"HARNESS_SELFTEST_TAG={uuid.uuid4()}"
    env = {**os.environ, "HARNESS_SELFTEST_TAG": tag.partition("=")[2]}
    run = run_pytest(tmp_path, "--tier", "cpu", *workers, env=env, timeout=100)
    assert "1 passed" in run.stdout, run.stdout + run.stderr
    time.sleep(0.2)
    assert _tagged(tag) == []
