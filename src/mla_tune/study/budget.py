"""A study's budget: how many distinct configs it measures, and when its --timeout runs out."""

from __future__ import annotations

import time

from .plan import StudyTarget

DEFAULT_TRIALS = 24


def study_budget(target: StudyTarget) -> int | None:
    """Distinct configs asked for: --trials, else none under a --timeout alone, else ``DEFAULT_TRIALS``."""
    r = target.request
    return r.n_trials if r.n_trials is not None else (None if r.timeout_s else DEFAULT_TRIALS)


def study_limit(target: StudyTarget) -> int:
    """Distinct configs the study needs measured: its trial budget (default 24), at most the whole space; the
    whole space when only a --timeout bounds it."""
    budget, n = study_budget(target), len(target.enumerate()[1])
    return min(budget, n) if budget is not None else n


def deadline_of(target: StudyTarget) -> float | None:
    """When a study's --timeout runs out (``time.monotonic``), from now."""
    return time.monotonic() + target.request.timeout_s if target.request.timeout_s else None


def past(deadline: float | None) -> bool:
    """Has ``deadline`` (``time.monotonic``; None: none) passed?"""
    return deadline is not None and time.monotonic() >= deadline


__all__ = ["DEFAULT_TRIALS", "deadline_of", "past", "study_budget", "study_limit"]
