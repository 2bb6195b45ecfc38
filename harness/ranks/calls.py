"""Shipping one test call into a rank and running it there.

Fixtures and parameters resolve in the pytest process; their values travel
pickled. The test function travels by name (module, file, class, function)
and is re-imported in the rank with pytest's assertion rewriting, so a failed
`assert` explains itself as it would in-process.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import operator
import os
import pickle
import sys
import time
import traceback
import types
from dataclasses import dataclass
from typing import Any

import pytest
from _pytest._code import Traceback
from _pytest.assertion.rewrite import rewrite_asserts

from harness.ranks.results import FAILED, PASSED, SKIPPED, XFAILED, RankReport

_COLLECTIVE_HINTS = ("gloo", "nccl", "connection closed by peer", "connection reset by peer", "timed out")


@dataclass(frozen=True)
class Call:
    nodeid: str
    module: str
    path: str
    cls: str | None
    name: str
    funcargs: bytes
    sys_path: tuple[str, ...]
    environ: dict[str, str]
    tbstyle: str


def make_call(item: pytest.Function) -> Call:
    """Describe `item` so a rank can run it; fails naming a fixture that cannot be pickled."""
    funcargs = {name: item.funcargs[name] for name in item._fixtureinfo.argnames}
    try:
        pickled = pickle.dumps(funcargs)
    except Exception as error:
        raise TypeError(_unpicklable(funcargs, error)) from error
    style = item.config.getoption("tbstyle", "auto")
    return Call(
        nodeid=item.nodeid,
        module=item.module.__name__,
        path=str(item.path),
        cls=item.cls.__qualname__ if item.cls is not None else None,
        name=item.function.__name__,
        funcargs=pickled,
        sys_path=tuple(sys.path),
        environ=dict(os.environ),
        tbstyle=style,
    )


def _unpicklable(funcargs: dict[str, Any], error: Exception) -> str:
    """Name the fixture that failed to pickle (only searched for once pickling has failed)."""
    for name, value in funcargs.items():
        try:
            pickle.dumps(value)
        except Exception:
            return (
                f"fixture or parameter {name!r} ({type(value).__name__}) cannot be pickled into the ranks "
                f"of a world_size test: {error}"
            )
    return f"the arguments of this world_size test cannot be pickled into its ranks: {error}"


def _load_module(name: str, path: str) -> types.ModuleType:
    loaded = sys.modules.get(name)
    if loaded is not None and getattr(loaded, "__file__", None) == path:
        return loaded
    if "." in name:
        importlib.import_module(name.rpartition(".")[0])
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None:
        raise ImportError(f"cannot import test module {name!r} from {path}")
    module = importlib.util.module_from_spec(spec)
    with open(path, "rb") as source_file:
        source = source_file.read()
    tree = ast.parse(source, filename=path)
    rewrite_asserts(tree, source, path, None)
    sys.modules[name] = module
    exec(compile(tree, path, "exec", dont_inherit=True), module.__dict__)
    return module


def resolve(call: Call) -> Any:
    """The test function (bound to a fresh instance for class tests), as pytest would call it."""
    sys.path[:0] = [entry for entry in call.sys_path if entry not in sys.path]
    module = _load_module(call.module, call.path)
    if call.cls is None:
        return getattr(module, call.name)
    return getattr(operator.attrgetter(call.cls)(module)(), call.name)


def _is_knock_on(error: BaseException) -> bool:
    """Errors a collective raises because another rank failed first."""
    import torch.distributed as dist

    if isinstance(error, dist.DistError):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and any(hint in text for hint in _COLLECTIVE_HINTS)


def _format(error: BaseException, style: str, test_path: str) -> str:
    """pytest's own traceback rendering; with `auto`, frames outside the test file are short."""
    tb = error.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    if style == "native":
        return "".join(traceback.format_exception(type(error), error, tb))
    try:
        info = pytest.ExceptionInfo.from_exc_info((type(error), error, tb or error.__traceback__))
        if style == "auto":
            info.traceback = Traceback(
                entry if str(entry.path) == test_path else entry.with_repr_style("short")
                for entry in info.traceback
            )
        return str(
            info.getrepr(style="long" if style == "auto" else style, funcargs=True, truncate_locals=True)
        )
    except Exception:
        return "".join(traceback.format_exception(type(error), error, tb))


def execute(call: Call, rank: int) -> RankReport:
    """Run the test body once in this rank and report how it ended."""
    import torch.distributed as dist

    start = time.perf_counter()
    try:
        resolve(call)(**pickle.loads(call.funcargs))
        outcome, text, knock_on = PASSED, "", False
    except pytest.xfail.Exception as error:
        outcome, text, knock_on = XFAILED, error.msg, False
    except pytest.skip.Exception as error:
        outcome, text, knock_on = SKIPPED, error.msg, False
    except KeyboardInterrupt:
        raise
    except BaseException as error:
        outcome, text, knock_on = FAILED, _format(error, call.tbstyle, call.path), _is_knock_on(error)
    return RankReport(
        rank,
        outcome,
        text,
        knock_on=knock_on,
        group_alive=dist.is_initialized(),
        duration_s=time.perf_counter() - start,
    )
