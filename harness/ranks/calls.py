"""Shipping one test call into a rank and running it there with pytest's semantics.

Fixtures and parameters resolve in the pytest process, and so do xunit
`setup_method`s and fixtures that set attributes on the test instance; the
values travel pickled. The test function travels by name (module, file, class,
function) and is re-imported in the rank with pytest's assertion rewriting, so
a failed `assert` explains itself as it would in-process. The run's warning
filters, traceback style and `-l` travel too.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import io
import operator
import os
import pickle
import sys
import time
import traceback
import types
import warnings
from dataclasses import dataclass, field
from typing import Any

import pytest
from _pytest._code import Traceback
from _pytest.assertion.rewrite import rewrite_asserts
from _pytest.config import apply_warning_filters, parse_warning_filter

from harness.ranks.results import FAILED, PASSED, SKIPPED, XFAILED, RankReport, RankWarning

_DIST_DIR = os.sep + os.path.join("torch", "distributed") + os.sep


@dataclass(frozen=True)
class Call:
    nodeid: str
    module: str
    path: str
    cls: str | None
    name: str
    funcargs: bytes
    instance_state: bytes | None  # attributes xunit set-up and fixtures gave the test instance
    sys_path: tuple[str, ...]
    environ: dict[str, str]
    tbstyle: str
    showlocals: bool
    verbosity: int
    seed: int
    warning_filters: tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]] = field(default=((), (), ()))


class _Pickler(pickle.Pickler):
    """A `monkeypatch` reaches the rank as a fresh MonkeyPatch, undone after the test there;
    the pytest process's own patches are undone by pytest and its environment is mirrored."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, pytest.MonkeyPatch):
            return pytest.MonkeyPatch, ()
        return NotImplemented


def _dumps(value: Any) -> bytes:
    buffer = io.BytesIO()
    _Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(value)
    return buffer.getvalue()


def pickled(values: dict[str, Any], what: str) -> bytes:
    """Pickle `values`, naming the entry that cannot be (only searched for once pickling has failed)."""
    try:
        return _dumps(values)
    except Exception as error:
        for name, value in values.items():
            try:
                _dumps(value)
            except Exception:
                raise TypeError(
                    f"{what} {name!r} ({type(value).__name__}) cannot be pickled into the ranks "
                    f"of a world_size test: {error}"
                ) from error
        raise TypeError(
            f"the {what}s of this world_size test cannot be pickled into its ranks: {error}"
        ) from error


def make_call(item: pytest.Function, seed: int) -> Call:
    """Describe `item` so a rank can run it; fails naming a value that cannot be pickled."""
    config = item.config
    funcargs = {name: item.funcargs[name] for name in item._fixtureinfo.argnames}
    instance = item.instance
    state = pickled(vars(instance), "test instance attribute") if instance is not None else None
    marks = tuple(arg for mark in item.iter_markers(name="filterwarnings") for arg in mark.args)
    return Call(
        nodeid=item.nodeid,
        module=item.module.__name__,
        path=str(item.path),
        cls=item.cls.__qualname__ if item.cls is not None else None,
        name=item.function.__name__,
        funcargs=pickled(funcargs, "fixture or parameter"),
        instance_state=state,
        sys_path=tuple(sys.path),
        environ=dict(os.environ),
        tbstyle=config.getoption("tbstyle", "auto"),
        showlocals=bool(config.getoption("showlocals", False)),
        verbosity=config.get_verbosity(),
        seed=seed,
        warning_filters=(
            tuple(config.getini("filterwarnings")),
            tuple(config.known_args_namespace.pythonwarnings or ()),
            marks,
        ),
    )


def load_module(name: str, path: str) -> types.ModuleType:
    """The test module, imported once per rank with pytest's assertion rewriting."""
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


def resolve(call: Call) -> tuple[Any, dict[str, Any]]:
    """The test function (bound to an instance carrying the pytest process's attributes) and its arguments."""
    sys.path[:0] = [entry for entry in call.sys_path if entry not in sys.path]
    module = load_module(call.module, call.path)
    kwargs = pickle.loads(call.funcargs)
    if call.cls is None:
        return getattr(module, call.name), kwargs
    cls = operator.attrgetter(call.cls)(module)
    instance = cls.__new__(cls)
    if call.instance_state is not None:
        vars(instance).update(pickle.loads(call.instance_state))
    return getattr(instance, call.name), kwargs


def _raised_in_collective(error: BaseException) -> bool:
    """Whether the innermost frame is torch.distributed's: a collective that broke, which
    may be another rank's doing. Decided by where it was raised, never by its text."""
    import torch.distributed as dist

    if isinstance(error, dist.DistError):
        return True
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and _DIST_DIR in tb.tb_frame.f_code.co_filename


def _format(error: BaseException, call: Call) -> str:
    """pytest's own traceback rendering; with `auto`, frames outside the test file are short."""
    tb = error.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    if call.tbstyle == "native":
        return "".join(traceback.format_exception(type(error), error, tb))
    try:
        info = pytest.ExceptionInfo.from_exc_info((type(error), error, tb or error.__traceback__))
        if call.tbstyle == "auto":
            info.traceback = Traceback(
                entry if str(entry.path) == call.path else entry.with_repr_style("short")
                for entry in info.traceback
            )
        return str(
            info.getrepr(
                style="long" if call.tbstyle == "auto" else call.tbstyle,
                funcargs=True,
                showlocals=call.showlocals,
                truncate_locals=call.verbosity <= 1,
            )
        )
    except Exception:
        return "".join(traceback.format_exception(type(error), error, tb))


def _location(error: BaseException) -> tuple[str, int] | None:
    """Where a skip was raised, as pytest reports it (the innermost frame not hidden)."""
    try:
        crash = pytest.ExceptionInfo.from_exception(error)._getreprcrash()
    except Exception:
        return None
    return (str(crash.path), crash.lineno) if crash is not None else None


def _portable(error: BaseException) -> bytes | None:
    """The exception itself, for `xfail(raises=...)` in the pytest process, when it survives pickling."""
    try:
        blob = pickle.dumps(error)
        pickle.loads(blob)
    except Exception:
        return None
    return blob


def _recorded(log: list[warnings.WarningMessage]) -> list[RankWarning]:
    recorded = []
    for entry in log:
        category = entry.category
        try:
            pickle.loads(pickle.dumps(category))
        except Exception:
            category = UserWarning
        recorded.append(RankWarning(category, str(entry.message), entry.filename, entry.lineno))
    return recorded


def _warning_filters(call: Call) -> None:
    """pytest's filters for a test: -W and ini first, then `filterwarnings` marks, as pytest applies them."""
    ini, cmdline, marks = call.warning_filters
    if not sys.warnoptions:
        warnings.filterwarnings("always", category=DeprecationWarning)
        warnings.filterwarnings("always", category=PendingDeprecationWarning)
    apply_warning_filters(list(ini), list(cmdline))
    for arg in marks:
        warnings.filterwarnings(*parse_warning_filter(arg, escape=False))


def failure(call: Call, rank: int, error: BaseException) -> RankReport:
    """A rank that could not even load the test (import error, unpicklable value)."""
    return RankReport(rank, FAILED, _format(error, call), failed_at=time.time())


def execute(call: Call, test: Any, kwargs: dict[str, Any], rank: int) -> RankReport:
    """Run the test body once in this rank and report how it ended."""
    start = time.perf_counter()
    report = RankReport(rank, PASSED)
    with warnings.catch_warnings(record=True) as log:
        _warning_filters(call)
        try:
            returned = test(**kwargs)
            if returned is not None:
                report.returned = type(returned).__name__
        except pytest.xfail.Exception as error:
            report.outcome, report.text = XFAILED, error.msg
        except pytest.skip.Exception as error:
            report.outcome, report.text, report.location = SKIPPED, error.msg, _location(error)
        except KeyboardInterrupt:
            raise
        except BaseException as error:
            report.outcome, report.text = FAILED, _format(error, call)
            report.collective = _raised_in_collective(error)
            report.error = _portable(error)
            report.failed_at = time.time()
    report.warnings = _recorded(log)
    report.duration_s = time.perf_counter() - start
    return report
