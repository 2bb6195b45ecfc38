"""One test call as the ranks get it, for tests that run `harness.ranks.calls` in this process."""

from __future__ import annotations

from harness.ranks.calls import Call

CALL = Call(
    nodeid="test_x.py::test_x",
    module=__name__,
    path=__file__,
    cls=None,
    name="test_x",
    funcargs=b"",
    instance_state=None,
    sys_path=(),
    environ={},
    tbstyle="short",
    showlocals=False,
    verbosity=0,
    seed=0,
)
