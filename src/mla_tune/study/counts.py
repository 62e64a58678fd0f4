"""Counts the study package reads off a stored study: what the budget counts, and the best finished trial."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..records import TrialResult

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial


def measured_count(study: optuna.Study) -> int:
    """Distinct configs measured: what the trial budget counts, since a repeated config costs no GPU time."""
    from optuna.trial import TrialState

    from ..coordination.claim import recorded_status

    return sum(1 for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))
               if recorded_status(t) and TrialResult.from_trial(t).fresh)


def best_ok_trial(study: optuna.Study) -> FrozenTrial | None:
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    return min(done, key=lambda t: t.value) if done else None


__all__ = ["best_ok_trial", "measured_count"]
