import pytest


@pytest.fixture
def pytester(pytester: pytest.Pytester) -> pytest.Pytester:
    """Inner projects opt in to the harness, as this one does in pyproject.toml."""
    pytester.makeini("[pytest]\nharness = true\n")
    return pytester
