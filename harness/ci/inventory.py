"""Every tiered test with its tier and GPU need, as JSON: what the CI matrix sizes jobs by.

Written by `pytest --collect-only --harness-inventory PATH`; read by `harness.ci.matrix`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest

from harness import tiers
from harness.tiers import tier_name


@dataclass(frozen=True)
class TieredTest:
    id: str
    tier: str
    gpus: int


def entries(items: list[pytest.Item]) -> list[TieredTest]:
    found = []
    for item in items:
        name = tier_name(item)
        if name is not None:
            found.append(TieredTest(item.nodeid, name, tiers.gpus_needed(item, name)))
    return found


def write(path: str, items: list[pytest.Item]) -> None:
    Path(path).write_text(json.dumps([asdict(e) for e in entries(items)], indent=1) + "\n")


def read(path: Path) -> list[TieredTest]:
    """The entries `write` wrote; a missing or malformed file is a ValueError naming it."""
    try:
        return [TieredTest(**raw) for raw in json.loads(path.read_text())]
    except (OSError, ValueError, TypeError) as error:
        raise ValueError(f"inventory {path}: {error}") from None
