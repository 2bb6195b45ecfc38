import os

import pytest

pytest_plugins = ["pytester"]


def pytest_sessionstart(session: pytest.Session) -> None:
    """Under mutmut, start the ranks' forkserver with mutmut's configuration loaded.

    mutmut's trampolines read its configuration from the working directory the first time
    one runs, and code that runs in ranks (`safe_paths`, `calls`) is mutated too; a rank
    that a pytester test starts works in that test's temporary folder, where there is no
    configuration, so it failed to start. Loaded here, in the forkserver, from the root,
    every rank inherits it.
    """
    if os.environ.get("MUTANT_UNDER_TEST"):
        from multiprocessing import forkserver

        from harness.ranks.pool import rank_context

        rank_context(("tests.mutmut_config",))
        forkserver.ensure_running()


@pytest.fixture
def fresh_dynamo() -> None:
    """Start from torch.compile's empty caches: code an earlier test in this process compiled
    for other shapes would be recompiled with dynamic dims, and symbolic flops measure nothing."""
    import torch._dynamo

    torch._dynamo.reset()
