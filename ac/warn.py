"""Warnings that point at the user's code, not at `ac`'s own frames."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

_PACKAGE = str(Path(__file__).resolve().parent)


def warn_at_caller(message: str) -> None:
    """Attribute `message` to the first frame outside `ac`, the user's `apply_ac` call,
    however many of `ac`'s (or a wrapper's) frames lie between: a fixed stacklevel breaks
    on every refactor and under tools that add frames."""
    frame, level = sys._getframe(1), 2
    while frame is not None and str(Path(frame.f_code.co_filename).resolve()).startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, UserWarning, stacklevel=level)
