"""Plain-data summaries of stored studies: what tables, ``show`` and the dashboard-minded user read.

Optuna is imported by the functions that read a storage, not with ``StudySummary``: ``show TABLE`` and the
listings render summaries' types without paying for it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..records import ATTRS_KEY, Confirmation, StudyName, TrialResult
from ..study.counts import best_ok_trial, measured_count

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial


@dataclass(frozen=True)
class StudySummary:
    """A study as tables and ``show`` read it. The trial and confirmation fields hold the stored attrs
    (``TrialResult.to_attrs``, ``Confirmation.to_attrs``); ``confirmed`` is the confirmation as its record."""

    name: str
    attrs: dict[str, Any]  # the study's mla_tune attrs (backend, model, shapes, environment, ...)
    measured: int  # trials that ran a measurement (duplicates excluded)
    failed: int
    duplicates: int
    baseline: dict[str, Any] | None  # user attrs of the baseline trial, and its "value"
    best_value: float | None
    best_attrs: dict[str, Any] | None
    best_number: int | None
    confirmation: dict[str, Any] | None
    # Every distinct config measured with its time (ms), fastest first (see ``_landscape``).
    landscape: tuple[tuple[dict[str, Any], float], ...] = ()

    @property
    def label(self) -> str:
        return StudyName.parse(self.name).label

    @property
    def confirmed(self) -> Confirmation | None:
        """The stored confirmation (None: not confirmed yet)."""
        return Confirmation.from_attrs(self.confirmation) if self.confirmation else None

    @property
    def baseline_value(self) -> float | None:
        """vLLM's default's trial value, None if it is not measured or failed (see ``trial_ms`` for its time)."""
        return self.baseline.get("value") if self.baseline else None

    @property
    def baseline_ms(self) -> float | None:
        """vLLM's default's time in its trial (ms; see ``trial_ms``)."""
        return self.trial_ms(self.baseline)

    @property
    def best_ms(self) -> float | None:
        """The best trial's time (ms; see ``trial_ms``)."""
        return self.trial_ms(self.best_attrs | {"value": self.best_value} if self.best_attrs else None)

    def trial_ms(self, attrs: dict[str, Any] | None) -> float | None:
        """A trial's time for display: one shape's time (whatever the shape's weight), or for a mix the weighted sum
        of the shapes' times. Since paired recording a shape's time is on the default's scale: the default's median in
        its own trial over the trial's speedup in its pair (two trials' own medians come from recordings minutes
        apart). A per-shape study of schema 1 stored its value multiplied by the shape's weight: its medians are
        read instead."""
        if not attrs or attrs.get("status") not in (None, "ok"):
            return None
        base = ((self.baseline or {}).get("paired") or {}).get("reference_ms")
        speedup = (attrs.get("paired") or {}).get("speedup")
        if base and speedup and self.attrs.get("schema_version", 1) >= 2:
            return float(base) / float(speedup)  # on the default's scale: trials were recorded minutes apart
        if attrs.get("median_ms") is not None:
            return float(attrs["median_ms"])
        shapes = attrs.get("shapes") or {}
        weights = {x["spec"]: x["weight"] for x in self.attrs.get("shapes") or []}
        if self.attrs.get("schema_version", 1) < 2:
            return attrs.get("value")  # a mix of schema 1: its value is the weighted sum of its medians
        if not shapes or set(shapes) != set(weights) or not all((v.get("paired") or {}).get("speedup")
                                                               for v in shapes.values()):
            return None
        return sum(weights[k] * v["paired"]["reference_ms"] / v["paired"]["speedup"] for k, v in shapes.items())


def summarize(study: optuna.Study) -> StudySummary:
    from optuna.trial import TrialState

    from ..study.sampling import recorded_status

    trials = [(t, TrialResult.from_trial(t)) for t in study.get_trials(deepcopy=False) if recorded_status(t)]
    fresh = [(t, r) for t, r in trials if r.fresh]
    base = next(((t, r) for t, r in fresh if r.role == "baseline"), None)
    best = best_ok_trial(study)
    conf = Confirmation.of_study(study.user_attrs)
    return StudySummary(
        name=study.study_name, attrs=study.user_attrs.get(ATTRS_KEY, {}), measured=len(fresh),
        failed=sum(1 for t, _ in fresh if t.state == TrialState.FAIL), duplicates=len(trials) - len(fresh),
        baseline=base[1].to_attrs() | {"value": base[0].value} if base else None,
        best_value=best.value if best else None,
        best_attrs=TrialResult.from_trial(best).to_attrs() if best else None,
        best_number=best.number if best else None,
        confirmation=conf.to_attrs() if conf is not None else None,
        landscape=_landscape(fresh))


def _landscape(fresh: list[tuple[FrozenTrial, TrialResult]]) -> tuple[tuple[dict[str, Any], float], ...]:
    """Every config measured, with its time. Trials recorded against vLLM's default (since paired recording) give
    each config's time on one scale: the default's time in its own trial over the config's speedup in its pair, so
    that two configs compare by their pairings, not by two recordings taken minutes apart."""
    from optuna.trial import TrialState

    done = [r for t, r in fresh if t.state == TrialState.COMPLETE and r.measurement is not None
            and r.measurement.config is not None and r.measurement.median_ms is not None]
    base = next((r.measurement.paired for r in done if r.role == "baseline" and r.measurement.paired), None)

    def ms(m: Any) -> float:
        return float(base.reference_ms / m.paired.speedup) if base and m.paired else float(m.median_ms)

    points = [(dict(r.measurement.config), ms(r.measurement)) for r in done]
    return tuple(sorted(points, key=lambda p: (p[1], sorted(p[0].items(), key=str))))


def load_summaries(storage: optuna.storages.BaseStorage,
                   keep: Callable[[str, dict[str, Any]], bool] = lambda name, attrs: True) -> list[StudySummary]:
    """Summaries of the mla-tune studies in ``storage`` that ``keep(name, attrs)`` accepts, sorted by name.

    The filter sees only names and study attrs, so studies it rejects never have their trials loaded (nor copied:
    Optuna's ``get_all_study_summaries`` would deep-copy every trial of every study just to count them).
    """
    import optuna

    out = []
    for s in storage.get_all_studies():
        attrs = s.user_attrs.get(ATTRS_KEY)
        if attrs is not None and keep(s.study_name, attrs):
            out.append(summarize(optuna.load_study(study_name=s.study_name, storage=storage)))
    return sorted(out, key=lambda s: s.name)


def summaries_of(storage: optuna.storages.BaseStorage, names: list[str]) -> list[StudySummary]:
    """Summaries of the studies ``names`` in that order, leaving out those not in ``storage``."""
    import optuna

    stored = {s.study_name for s in storage.get_all_studies()}
    return [summarize(optuna.load_study(study_name=n, storage=storage)) for n in names if n in stored]


__all__ = ["StudySummary", "best_ok_trial", "load_summaries", "measured_count", "summaries_of", "summarize"]
