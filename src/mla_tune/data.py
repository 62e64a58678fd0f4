"""Where the YAML data lives: ``search_spaces/`` in a checkout, or inside an installed wheel."""

from __future__ import annotations

from pathlib import Path

from . import env

_PACKAGE = Path(__file__).resolve().parent


def search_spaces_dir() -> Path:
    """``$MLA_TUNE_SEARCH_SPACES``, else the wheel's copy, else the checkout's ``search_spaces/``."""
    chosen = env.search_spaces_dir()
    if chosen is not None:
        return chosen
    bundled = _PACKAGE / "search_spaces"
    if bundled.is_dir():
        return bundled
    return _PACKAGE.parent.parent / "search_spaces"
