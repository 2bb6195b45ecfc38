"""A test call as a rank runs it: values pickled with a named error, warnings under pytest's
filters, the exception kept for xfail(raises=), tracebacks in the run's style."""

from __future__ import annotations

import pickle
import sys
import threading
import warnings
from dataclasses import replace

import pytest

from harness.ranks.calls import execute, pickled, resolve
from harness.ranks.results import FAILED, PASSED, RankWarning
from tests.harness.rank_call import CALL

# A self-test fails within 60 s when what it checks hangs, not at the suite-wide 600 s.
pytestmark = [pytest.mark.tiers("cpu"), pytest.mark.timeout(60)]


def test_a_value_that_cannot_bepickled_is_named_with_its_type():
    with pytest.raises(TypeError) as error:
        pickled({"fine": 1, "lock": threading.Lock()}, "fixture or parameter")
    assert str(error.value) == (
        "fixture or parameter 'lock' (lock) cannot be pickled into the ranks of a world_size test: "
        "cannot pickle '_thread.lock' object"
    )


def test_a_monkeypatch_reaches_the_rank_as_a_fresh_one():
    values = pickle.loads(pickled({"monkeypatch": pytest.MonkeyPatch(), "n": 3}, "fixture or parameter"))
    assert isinstance(values["monkeypatch"], pytest.MonkeyPatch) and values["n"] == 3


def _warns():
    warnings.warn("careful", UserWarning, stacklevel=1)


WARN_LINE = _warns.__code__.co_firstlineno + 1


def test_a_ranks_warnings_are_recorded_for_the_pytest_process():
    report = execute(CALL, _warns, {}, rank=0)
    assert report.outcome == PASSED
    assert report.warnings == [RankWarning(UserWarning, "careful", __file__, WARN_LINE)]


def test_ini_command_line_and_mark_filters_apply_in_that_order():
    as_error = replace(CALL, warning_filters=(("error::UserWarning",), (), ()))
    failed = execute(as_error, _warns, {}, rank=0)
    assert failed.outcome == FAILED and "UserWarning: careful" in failed.text and not failed.collective
    ignored = replace(CALL, warning_filters=(("error::UserWarning",), (), ("ignore::UserWarning",)))
    assert execute(ignored, _warns, {}, rank=0).warnings == []
    by_command_line = replace(CALL, warning_filters=(("ignore::UserWarning",), ("error::UserWarning",), ()))
    assert execute(by_command_line, _warns, {}, rank=0).outcome == FAILED


def test_deprecation_warnings_are_shown_as_pytest_shows_them():
    def deprecated():
        warnings.warn("old", DeprecationWarning, stacklevel=1)

    (warning,) = execute(CALL, deprecated, {}, rank=0).warnings
    assert (warning.category, warning.message) == (DeprecationWarning, "old")


def test_a_warning_class_that_cannot_travel_is_sent_as_a_user_warning():
    class LocalWarning(UserWarning):
        pass

    def warns_local():
        warnings.warn("local", LocalWarning, stacklevel=1)

    (warning,) = execute(CALL, warns_local, {}, rank=0).warnings
    assert (warning.category, warning.message) == (UserWarning, "local")


class _Unpicklable(Exception):
    def __init__(self, handle):
        super().__init__("holds a lock")
        self.handle = handle


def test_the_exception_travels_for_xfail_raises_when_it_pickles():
    def raises_value_error():
        raise ValueError("x")

    error = pickle.loads(execute(CALL, raises_value_error, {}, rank=0).error)
    assert type(error) is ValueError and error.args == ("x",)

    def raises_unpicklable():
        raise _Unpicklable(threading.Lock())

    report = execute(CALL, raises_unpicklable, {}, rank=0)
    assert report.outcome == FAILED and report.error is None and "holds a lock" in report.text


def test_the_traceback_follows_the_runs_style():
    def fails():
        raise ValueError("styled")

    native = execute(replace(CALL, tbstyle="native"), fails, {}, rank=0).text
    assert native.startswith("Traceback (most recent call last):") and native.endswith("ValueError: styled\n")
    assert "harness/ranks/calls.py" not in native  # the rank's own frames are cut
    line = execute(replace(CALL, tbstyle="line"), fails, {}, rank=0).text
    assert line.endswith("ValueError: styled") and "\n" not in line.strip()
    long = execute(replace(CALL, tbstyle="long"), fails, {}, rank=0).text
    assert long.startswith('def fails():\n>       raise ValueError("styled")\nE       ValueError: styled\n')


def test_showlocals_shows_the_failing_frames_locals():
    def fails():
        local_value = 41
        raise ValueError(local_value)

    shown = execute(replace(CALL, showlocals=True), fails, {}, rank=0).text
    assert "local_value = 41" in shown
    assert "local_value = 41" not in execute(CALL, fails, {}, rank=0).text


def test_auto_style_is_long_in_the_test_file_and_short_elsewhere():
    import json

    def fails_in_json():
        json.loads("{")

    in_this_file = replace(CALL, module=__name__, path=__file__, tbstyle="auto")
    text = execute(in_this_file, fails_in_json, {}, rank=0).text
    assert text.startswith('def fails_in_json():\n>       json.loads("{")\n')
    assert "decoder.py:" in text and "in raw_decode\n    obj, end = self.scan_once(s, idx)" in text
    assert "def raw_decode" not in text  # a short entry: the line only


RANK_MODULE = """
class TestGroup:
    def test_method(self, scale):
        assert self.base * scale == 7


def test_function(scale):
    return scale
"""


@pytest.fixture
def rank_module(tmp_path, monkeypatch):
    """A test module as a rank finds it: by name and path, not yet imported."""
    path = tmp_path / "rank_bodies_selftest.py"
    path.write_text(RANK_MODULE)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "rank_bodies_selftest", raising=False)
    yield path
    sys.modules.pop("rank_bodies_selftest", None)


def test_a_rank_puts_only_the_import_paths_it_lacks_in_front_of_its_own(rank_module):
    before = list(sys.path)
    call = replace(
        CALL,
        module="rank_bodies_selftest",
        path=str(rank_module),
        name="test_function",
        funcargs=pickle.dumps({}),
        sys_path=(before[0], str(rank_module.parent)),
    )
    resolve(call)
    assert sys.path == [str(rank_module.parent), *before]


def test_a_rank_resolves_functions_and_methods_with_the_instance_pytest_set_up(rank_module):
    function_call = replace(
        CALL,
        module="rank_bodies_selftest",
        path=str(rank_module),
        name="test_function",
        funcargs=pickle.dumps({"scale": 3}),
        sys_path=(str(rank_module.parent),),
    )
    test, kwargs = resolve(function_call)
    assert (test(**kwargs), kwargs) == (3, {"scale": 3})
    assert sys.path[0] == str(rank_module.parent)
    method_call = replace(
        function_call, cls="TestGroup", name="test_method", instance_state=pickle.dumps({"base": 2})
    )
    method, kwargs = resolve(method_call)
    assert method.__self__.base == 2
    assert resolve(method_call)[0].__func__ is method.__func__  # the module is loaded once
    report = execute(method_call, method, kwargs, rank=0)
    assert report.outcome == FAILED and "assert (2 * 3) == 7" in report.text  # rewritten asserts explain
