import pytest

pytest_plugins = ["pytester"]


@pytest.fixture
def fresh_dynamo() -> None:
    """Start from torch.compile's empty caches: code an earlier test in this process compiled
    for other shapes would be recompiled with dynamic dims, and symbolic flops measure nothing."""
    import torch._dynamo

    torch._dynamo.reset()
