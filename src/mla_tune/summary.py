"""Plain-data summaries of stored studies: what tables, ``show`` and the dashboard-minded user read."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from .confirm import CONFIRM_KEY
from .records import StudyName
from .sampling import recorded_status
from .study import ATTRS_KEY, best_ok_trial


@dataclass(frozen=True)
class StudySummary:
    name: str
    attrs: dict[str, Any]  # the study's mla_tune attrs (backend, model, shapes, environment, ...)
    measured: int  # trials that ran a measurement (duplicates excluded)
    failed: int
    duplicates: int
    baseline: dict[str, Any] | None  # user attrs of the baseline trial
    best_value: float | None
    best_attrs: dict[str, Any] | None
    best_number: int | None
    confirmation: dict[str, Any] | None
    # Every distinct config measured with its trial median (ms), fastest first: one recording each, not paired.
    landscape: tuple[tuple[dict[str, Any], float], ...] = ()

    @property
    def label(self) -> str:
        return StudyName.parse(self.name).label


def summarize(study: optuna.Study) -> StudySummary:
    trials = [t for t in study.get_trials(deepcopy=False) if recorded_status(t)]
    dup = [t for t in trials if "duplicate_of" in t.user_attrs]
    fresh = [t for t in trials if "duplicate_of" not in t.user_attrs]
    base = next((t for t in fresh if t.user_attrs.get("role") == "baseline"), None)
    best = best_ok_trial(study)
    return StudySummary(
        name=study.study_name, attrs=study.user_attrs.get(ATTRS_KEY, {}), measured=len(fresh),
        failed=sum(1 for t in fresh if t.state == TrialState.FAIL), duplicates=len(dup),
        baseline=dict(base.user_attrs) | {"value": base.value} if base else None,
        best_value=best.value if best else None, best_attrs=dict(best.user_attrs) if best else None,
        best_number=best.number if best else None, confirmation=study.user_attrs.get(CONFIRM_KEY),
        landscape=_landscape(fresh))


def _landscape(trials: list) -> tuple[tuple[dict[str, Any], float], ...]:
    points = [(dict(t.user_attrs["config"]), float(t.user_attrs["median_ms"])) for t in trials
              if t.state == TrialState.COMPLETE and "config" in t.user_attrs and "median_ms" in t.user_attrs]
    return tuple(sorted(points, key=lambda p: (p[1], sorted(p[0].items(), key=str))))


def load_summaries(storage: optuna.storages.BaseStorage,
                   keep: Callable[[str, dict[str, Any]], bool] = lambda name, attrs: True) -> list[StudySummary]:
    """Summaries of the mla-tune studies in ``storage`` that ``keep(name, attrs)`` accepts, sorted by name.

    The filter sees only names and study attrs, so studies it rejects never have their trials loaded.
    """
    out = []
    for s in optuna.get_all_study_summaries(storage, include_best_trial=False):
        attrs = s.user_attrs.get(ATTRS_KEY)
        if attrs is not None and keep(s.study_name, attrs):
            out.append(summarize(optuna.load_study(study_name=s.study_name, storage=storage)))
    return sorted(out, key=lambda s: s.name)


def summaries_of(storage: optuna.storages.BaseStorage, names: list[str]) -> list[StudySummary]:
    """Summaries of the studies ``names`` in that order, leaving out those not in ``storage``."""
    stored = {s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    return [summarize(optuna.load_study(study_name=n, storage=storage)) for n in names if n in stored]
