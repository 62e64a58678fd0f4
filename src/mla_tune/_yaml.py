"""Loading YAML data files strictly: every problem names the file and the key."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from .errors import DataFileError

SCHEMA_VERSION = 1


def load(path: Path) -> dict[str, Any]:
    """Parse ``path`` into a mapping and check its ``schema_version``."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise DataFileError(str(path), "", f"cannot read: {e.strerror}") from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else ""
        raise DataFileError(str(path), where, f"not valid YAML: {getattr(e, 'problem', e)}") from e
    if not isinstance(data, dict):
        raise DataFileError(str(path), "", "expected a mapping at the top level")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise DataFileError(str(path), "schema_version",
                            f"is {version!r}, this mla-tune reads schema_version {SCHEMA_VERSION}")
    return data


def check_keys(path: Path, where: str, data: Any, required: Iterable[str], optional: Iterable[str] = ()
               ) -> Mapping[str, Any]:
    """``data`` must be a mapping with all of ``required`` and nothing outside ``required | optional``."""
    if not isinstance(data, dict):
        raise DataFileError(str(path), where, f"expected a mapping, got {type(data).__name__}")
    required, allowed = set(required), set(required) | set(optional)
    for key in data:
        if key not in allowed:
            raise DataFileError(str(path), f"{where}.{key}" if where else str(key),
                                f"unknown key; allowed: {', '.join(sorted(allowed))}")
    for key in sorted(required - set(data)):
        raise DataFileError(str(path), f"{where}.{key}" if where else key, "missing")
    return data


def expect(path: Path, key: str, value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    """``value`` must be an instance of ``kind`` (bools are not ints here)."""
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise DataFileError(str(path), key, f"expected {what}, got {value!r}")
    if not isinstance(value, kind):
        raise DataFileError(str(path), key, f"expected {what}, got {value!r}")
    return value
