"""Progress of a study as values, for progress bars and logs: the library reports, the CLI renders."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Progress:
    """One step of a study, for progress bars: never printed by the library."""

    study: str
    phase: str  # "trial", "confirm", "done"
    done: int
    total: int | None
    best_ms: float | None = None
    # "trial": the best config's speedup over vLLM's default so far; "done": the confirmed winner's (None: vLLM's
    # default kept)
    speedup: float | None = None
    message: str = ""


ProgressFn = Callable[[Progress], None]

__all__ = ["Progress", "ProgressFn"]
