"""Warnings that point at the user's code, not at `ac`'s own frames."""

from __future__ import annotations

import os
import sys
import warnings

_PACKAGE = os.path.dirname(os.path.realpath(__file__)) + os.sep  # not a sibling named ac_*


def warn_at_caller(message: str) -> None:
    """Attribute `message` to the code that called into `ac` (the user's `apply_ac` line):
    the caller of the outermost `ac` frame on the stack. A fixed stacklevel breaks on every
    refactor and under tools that wrap functions in frames of their own."""
    frame, level, outermost = sys._getframe(0), 1, 1
    while frame is not None:
        if os.path.realpath(frame.f_code.co_filename).startswith(_PACKAGE):
            outermost = level
        frame, level = frame.f_back, level + 1
    warnings.warn(message, UserWarning, stacklevel=outermost + 1)
