"""Where the YAML data lives: ``search_spaces/`` in a checkout, or inside an installed wheel."""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def search_spaces_dir() -> Path:
    """``$MLA_TUNE_SEARCH_SPACES``, else the wheel's copy, else the checkout's ``search_spaces/``."""
    env = os.environ.get("MLA_TUNE_SEARCH_SPACES")
    if env:
        return Path(env)
    bundled = _PACKAGE / "search_spaces"
    if bundled.is_dir():
        return bundled
    return _PACKAGE.parent.parent / "search_spaces"
