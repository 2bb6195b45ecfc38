"""Every tiered test with its tier and GPU need, as JSON: what the CI matrix sizes jobs by.

Written by `pytest --collect-only --harness-inventory PATH`; read by `harness.ci.matrix`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest

from harness import safe_paths, tiers


@dataclass(frozen=True)
class TieredTest:
    id: str
    tier: str
    gpus: int


def entries(items: list[pytest.Item]) -> list[TieredTest]:
    return [
        TieredTest(item.nodeid, name, tiers.gpus_needed(item, name))
        for item in items
        for name in tiers.listed_tiers(item)
    ]


def write(path: str, items: list[pytest.Item]) -> None:
    text = json.dumps([asdict(e) for e in entries(items)], indent=1) + "\n"
    safe_paths.write_atomically(Path(path), text)


def _entry(raw: object) -> TieredTest:
    if not isinstance(raw, dict) or set(raw) != {"id", "tier", "gpus"}:
        raise ValueError(f"expected objects with id, tier and gpus, got {raw!r}")
    entry = TieredTest(**raw)
    if not isinstance(entry.id, str) or entry.tier not in tiers.TIERS:
        raise ValueError(f"expected a test id and one of the tiers {list(tiers.TIERS)}, got {raw!r}")
    if isinstance(entry.gpus, bool) or not isinstance(entry.gpus, int) or entry.gpus < 0:
        raise ValueError(f"gpus must be a non-negative int, got {raw!r}")
    return entry


def read(path: Path) -> list[TieredTest]:
    """The entries `write` wrote; a missing or malformed file is a ValueError naming it."""
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, list):
            raise ValueError(f"expected a list of tests, got {type(data).__name__}")
        return [_entry(raw) for raw in data]
    except (OSError, ValueError) as error:
        raise ValueError(f"inventory {path}: {error}") from None
