"""What docs/harness.md quotes of the command-line help, so tests can hold the two together."""

from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs" / "harness.md"


def quoted_help(command: str) -> str:
    """The ```text block that follows the docs' line naming `command`."""
    text = DOCS.read_text()
    match = re.search(rf"`{re.escape(command)}`[^\n]*\n(?:[^\n]*\n)*?```text\n(.*?)```", text, re.S)
    assert match, f"docs/harness.md quotes no help for `{command}`"
    return match.group(1)


def unwrapped(text: str) -> str:
    """Help text with its whitespace gone: where lines wrap depends on the terminal's width."""
    return re.sub(r"\s+", "", text)
