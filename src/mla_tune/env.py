"""Every environment variable mla-tune reads, declared here once and parsed with its type and bounds.

A bad value is one ``EnvError`` line naming the variable and what it accepts, never a silent fallback
(``MLA_TUNE_HEARTBEAT_S=inf`` used to switch crash recovery off). Unset or empty means the default. Each accessor
reads the environment when it is called, so a worker's inherited environment and a test's ``monkeypatch`` are
seen; the parsing is pure and cheap.
"""

from __future__ import annotations

import math
import os
import stat
import tempfile
from pathlib import Path

from .errors import UsageError

HEARTBEAT_S = "MLA_TUNE_HEARTBEAT_S"
LOCK_DIR = "MLA_TUNE_LOCK_DIR"
SEARCH_SPACES = "MLA_TUNE_SEARCH_SPACES"
REPLAY_DELAY_S = "MLA_TUNE_REPLAY_DELAY_S"
STORAGE = "MLA_TUNE_STORAGE"
PROFILE = "MLA_TUNE_PROFILE"
CUDA_VISIBLE_DEVICES = "CUDA_VISIBLE_DEVICES"  # CUDA's, read to map --gpus indices to devices

VARIABLES = {
    HEARTBEAT_S: "seconds between a running trial's heartbeats, 0.1 to 3600 (default 10); stale after 3 missed",
    LOCK_DIR: "directory of the per-GPU lock files (default: the system temp dir)",
    SEARCH_SPACES: "directory of the search spaces, models.yaml and workloads.yaml (default: the bundled ones)",
    REPLAY_DELAY_S: "seconds the replay runner sleeps per measurement, 0 to 60 (default 0; tests use it)",
    STORAGE: "the default --storage (a journal file, sqlite:///FILE or postgresql://...)",
    PROFILE: "the serving profile mla-tune's vLLM plugin applies (unset: the plugin does nothing)",
}

DEFAULT_HEARTBEAT_S = 10.0
HEARTBEAT_BOUNDS = (0.1, 3600.0)
REPLAY_DELAY_BOUNDS = (0.0, 60.0)
MAX_TEXT = 4096  # a path or URL longer than this is a mistake, not a setting


class EnvError(UsageError):
    """An environment variable with a value mla-tune cannot use; names the variable and the accepted values."""

    def __init__(self, name: str, value: str, reason: str) -> None:
        self.name, self.value = name, value
        shown = value if len(value) <= 60 else value[:57] + "..."
        super().__init__(f"{name}={shown!r}: {reason}", hint=f"fix or unset {name}")


def _text(name: str) -> str | None:
    """The variable's value, stripped; None when unset or empty."""
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return None
    value = raw.strip()
    if len(value) > MAX_TEXT or any(ord(c) < 32 for c in value):
        raise EnvError(name, value, f"expected one line of at most {MAX_TEXT} characters")
    return value


def seconds(name: str, default: float, low: float, high: float) -> float:
    """A finite number of seconds in ``[low, high]``; ``inf``, ``nan`` and anything else are refused."""
    value = _text(name)
    if value is None:
        return default
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and low <= number <= high):
        raise EnvError(name, value, f"expected a finite number of seconds from {low:g} to {high:g}")
    return number


def heartbeat_s() -> float:
    """``$MLA_TUNE_HEARTBEAT_S``: the beat interval of a running trial (a trial is stale after 3 missed beats)."""
    return seconds(HEARTBEAT_S, DEFAULT_HEARTBEAT_S, *HEARTBEAT_BOUNDS)


def replay_delay_s() -> float:
    """``$MLA_TUNE_REPLAY_DELAY_S``: seconds the replay runner sleeps per measurement."""
    return seconds(REPLAY_DELAY_S, 0.0, *REPLAY_DELAY_BOUNDS)


def _directory(name: str, *, must_exist: bool) -> Path | None:
    value = _text(name)
    if value is None:
        return None
    path = Path(value).expanduser()
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if must_exist:
            raise EnvError(name, value, "no such directory") from None
        return path
    except OSError as e:
        raise EnvError(name, value, f"cannot use it: {e.strerror}") from None
    if not stat.S_ISDIR(mode):
        raise EnvError(name, value, "not a directory")
    return path


def lock_dir() -> Path:
    """``$MLA_TUNE_LOCK_DIR`` (made when missing), else the system temp dir."""
    return _directory(LOCK_DIR, must_exist=False) or Path(tempfile.gettempdir())


def search_spaces_dir() -> Path | None:
    """``$MLA_TUNE_SEARCH_SPACES``, an existing directory; None when unset (the bundled spaces)."""
    return _directory(SEARCH_SPACES, must_exist=True)


def storage() -> str | None:
    """``$MLA_TUNE_STORAGE`` as text; the storage module checks it as it checks ``--storage``."""
    return _text(STORAGE)


def profile_path() -> Path | None:
    """``$MLA_TUNE_PROFILE``: the profile file the vLLM plugin applies; None when unset."""
    value = _text(PROFILE)
    return None if value is None else Path(value).expanduser()


def cuda_visible_devices() -> tuple[str, ...] | None:
    """``$CUDA_VISIBLE_DEVICES`` as device ids; None when unset or empty (every GPU visible)."""
    value = _text(CUDA_VISIBLE_DEVICES)
    if value is None:
        return None
    ids = tuple(v.strip() for v in value.split(",") if v.strip())
    return ids or None


__all__ = ["VARIABLES", "EnvError", "cuda_visible_devices", "heartbeat_s", "lock_dir", "profile_path",
           "replay_delay_s", "search_spaces_dir", "seconds", "storage"]
