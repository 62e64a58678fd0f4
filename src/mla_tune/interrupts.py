"""Ctrl-C in a worker at safe points only: in a measurement or a wait, never while Optuna creates or records a trial.

A KeyboardInterrupt inside ``study.ask`` leaves a trial RUNNING with no heartbeat yet, which Optuna's RDB storage
then never fails. Worker processes install this handler: a SIGINT raises at once inside a ``safe_point`` (the
objective records the trial as failed), and otherwise is held until the next one. Without ``install`` (a plain
``mla-tune study``), SIGINT behaves as Python's default and ``safe_point`` costs nothing.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from typing import Any

_state = {"safe": 0, "pending": False}


def install() -> None:
    signal.signal(signal.SIGINT, _on_sigint)


def _on_sigint(signum: int, frame: Any) -> None:
    if _state["safe"]:
        raise KeyboardInterrupt
    _state["pending"] = True


def check() -> None:
    """Raise a held Ctrl-C now."""
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
