"""File names built from data (a GPU name, a model label, a table's file name): made safe in this one place.

A name read from a file or a storage is never trusted as a path: ``safe_component`` reduces any text to one
file-name component, and ``join_inside`` joins a component to its folder and checks that the result stays there,
so a GPU called ``../../etc`` or ``/tmp/x`` cannot make a command write outside the folder it was given.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import UsageError

MAX_COMPONENT = 200  # characters of one component; most filesystems allow 255 bytes, and a suffix comes after it
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")  # ASCII letters, digits, '.', '_' and '-' are kept; runs of others: '-'


def safe_component(text: object, *, fallback: str = "unnamed", limit: int = MAX_COMPONENT) -> str:
    """``text`` as one file-name component: every run of characters other than ASCII letters, digits, ``.``, ``_``
    and ``-`` (``/``, ``\\``, spaces, control characters included) becomes one ``-``; no leading or trailing ``.``
    or ``-`` (so never ``..``, a hidden file or an option); at most ``limit`` characters; ``fallback`` when nothing
    is left. A name that is already safe comes back unchanged."""
    name = _UNSAFE.sub("-", str(text)).strip(".-")
    name = name[:limit].rstrip(".-")
    return name or fallback


def join_inside(folder: Path, name: str) -> Path:
    """``folder / name``, checked to stay inside ``folder`` (symbolic links resolved); anything else is refused
    in one line. ``name`` should come from ``safe_component``: this check is the second line of defence."""
    folder = Path(folder)
    path = folder / name
    root = os.path.realpath(folder)
    if name in ("", ".", "..") or os.path.dirname(os.path.realpath(path)) != root:
        raise UsageError(f"refusing to write {name!r}: the file would not be directly inside {folder}",
                         hint="a name read from an input file holds a path; report it")
    return path


__all__ = ["MAX_COMPONENT", "join_inside", "safe_component"]
