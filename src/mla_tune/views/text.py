"""Text from data made safe for a terminal: the one helper every rendering passes strings through.

A table, profile, recording or storage is data anyone may have written: a GPU name or a note holding ``ESC [ 2 J``
would clear the reader's screen, an OSC sequence retitle the window or hide a line, a ``\\r`` overwrite what was
printed. ``printable`` shows every control character as its escape (``\\x1b``), so what reaches the terminal is
text; ``say`` and ``add_row`` apply it to what a rich console prints.
"""

from __future__ import annotations

import re
from typing import Any

# C0 controls but tab and newline (layout, not commands), DEL, C1 controls (U+0080-U+009F: 8-bit CSI, OSC, ...),
# and the bidirectional overrides and isolates, which reorder what is shown ("Trojan source").
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escape(m: re.Match) -> str:
    code = ord(m.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: object) -> str:
    """``text`` with every terminal control character written as its escape; plain text comes back unchanged."""
    return _CONTROL.sub(_escape, str(text))


def say(console: Any, obj: Any) -> None:
    """``console.print(obj)``, a string made ``printable`` first (a table's cells are made so by ``add_row``)."""
    console.print(printable(obj) if isinstance(obj, str) else obj)


def add_row(table: Any, *cells: Any) -> None:
    table.add_row(*(printable(c) if isinstance(c, str) else c for c in cells))


__all__ = ["add_row", "printable", "say"]
