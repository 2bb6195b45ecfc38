"""A clock tests move by hand, so timing code is checked against known durations."""

from __future__ import annotations

import types

import pytest

from ac.budget import costs


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def perf_counter(self) -> float:
        return self.now


def install(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """A fresh clock behind `ac.budget.costs.timed_s`, the one place AC and the harness time a call."""
    clock = Clock()
    monkeypatch.setattr(costs, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))
    return clock
