"""Ctrl-C and SIGTERM at safe points only: in a measurement or a wait, never while Optuna creates or records a trial.

A KeyboardInterrupt inside ``study.ask`` leaves a trial RUNNING with no params and no heartbeat yet (Optuna's RDB
storage then never fails it), and one inside a write can tear what is being written. Studies, sweeps and workers
run under ``handled``: SIGINT, and SIGTERM (a scheduler or systemd stopping the job) the same way, raise
KeyboardInterrupt at once inside a ``safe_point`` and are otherwise held until the next one (``check``). A second
signal while one is held raises at once: a process stuck outside any safe point can still be stopped.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

_state = {"safe": 0, "pending": False}
SIGNALS = (signal.SIGINT, signal.SIGTERM)


def install() -> None:
    """Handle SIGINT and SIGTERM for the rest of this process (a worker)."""
    for sig in SIGNALS:
        signal.signal(sig, _on_signal)


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """Handle SIGINT and SIGTERM while the block runs, then restore the previous handlers. Off the main thread
    (where Python cannot install handlers) it does nothing and signals keep their handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {sig: signal.signal(sig, _on_signal) for sig in SIGNALS}
    try:
        yield
        check()  # one that came after the last safe point still stops the run
    finally:
        _state["pending"] = False
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _on_signal(signum: int, frame: Any) -> None:
    if _state["safe"] or _state["pending"]:
        _state["pending"] = False
        raise KeyboardInterrupt
    _state["pending"] = True


def check() -> None:
    """Raise a held signal now."""
    if _state["pending"]:
        _state["pending"] = False
        raise KeyboardInterrupt


@contextlib.contextmanager
def safe_point() -> Iterator[None]:
    check()
    _state["safe"] += 1
    try:
        yield
    finally:
        _state["safe"] -= 1
