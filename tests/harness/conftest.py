# Imported here, not first by an inner run: pytester drops the modules an inner run
# imported, and with this one goes its forkserver, so every inner run with ranks would
# start a new one that imports torch again.
import multiprocessing.forkserver  # noqa: F401

import pytest


@pytest.fixture
def pytester(pytester: pytest.Pytester) -> pytest.Pytester:
    """Inner projects opt in to the harness, as this one does in pyproject.toml."""
    pytester.makeini("[pytest]\nharness = true\n")
    return pytester
