"""Heartbeats for journal-file storages, so a dead worker's trial is failed and retried as on PostgreSQL.

Optuna's crash recovery (a thread beats while a trial runs; ``optimize`` fails trials that stopped beating
before each new trial and hands them to ``RetryHeartbeatStaleTrialCallback``) exists only for storages that
implement ``BaseHeartbeat``, and in Optuna <= 5.0 only ``RDBStorage`` does (optuna/optuna#6615 asks for the
journal). This subclass implements that one interface on top of the journal's own API, the beat being a trial
system attr, so Optuna's heartbeat thread, ``fail_stale_trials`` and retry callback do all the rest unchanged.
"""

from __future__ import annotations

import datetime as _dt
import os
import time
from collections.abc import Callable

import optuna
from optuna.storages import JournalStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from ._optuna_compat import HeartbeatStorage, has_heartbeat, trial_id

HEARTBEAT_ENV = "MLA_TUNE_HEARTBEAT_S"  # seconds between beats (default 10); tests make it short
DEFAULT_INTERVAL_S = 10.0
GRACE_FACTOR = 3  # a trial is stale after 3 missed beats: 30 s by default
BEAT_ATTR = "mla_tune:heartbeat"  # trial system attr: the worker's wall clock (epoch s) at its last beat
MAX_RETRY = 1


def heartbeat_interval_s() -> float:
    """The beat interval from ``$MLA_TUNE_HEARTBEAT_S`` (seconds, > 0), else 10 s."""
    raw = os.environ.get(HEARTBEAT_ENV, "")
    try:
        value = float(raw) if raw else DEFAULT_INTERVAL_S
    except ValueError:
        value = DEFAULT_INTERVAL_S
    return value if value > 0 else DEFAULT_INTERVAL_S


def grace_period_s() -> float:
    return GRACE_FACTOR * heartbeat_interval_s()


# User attrs a retry keeps. Optuna's callback copies them all, but a dead trial's result attrs ("status",
# "duplicate_of", medians, ...) belong to a run that never finished: a retry carrying them would look measured
# (or reused) before it ran. The role keeps a retried baseline recognisable as the baseline.
RETRY_KEEPS = ("role",)


def retry_callback() -> Callable[[optuna.Study, FrozenTrial], None]:
    """A dead worker's trial is re-enqueued once (Optuna's own callback): a config that kills twice is dropped."""
    import copy
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        inner = RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)

    def retry(study: optuna.Study, trial: FrozenTrial) -> None:
        clean = copy.deepcopy(trial)
        clean.user_attrs = {k: v for k, v in trial.user_attrs.items() if k in RETRY_KEEPS}
        inner(study, clean)

    return retry


class HeartbeatJournalStorage(JournalStorage, HeartbeatStorage):
    """A ``JournalStorage`` with Optuna's heartbeat interface; the journal file itself is unchanged.

    Beats use the workers' wall clocks: hosts sharing a journal file must keep their clocks in sync (NTP) to
    well within the grace period.
    """

    def __init__(self, backend: optuna.storages.journal.BaseJournalBackend, *, interval_s: float,
                 grace_s: float, callback: Callable[[optuna.Study, FrozenTrial], None] | None) -> None:
        super().__init__(backend)
        self._interval_s, self._grace_s, self._callback = interval_s, grace_s, callback

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            self.set_trial_system_attr(trial_id, BEAT_ATTR, time.time())
        except (optuna.exceptions.UpdateFinishedTrialError, KeyError):
            pass  # failed as stale by another worker meanwhile: nothing left to keep alive

    def stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        stale = []
        for t in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            if now - _last_sign_of_life(t) > self._grace_s:
                stale.append(trial_id(t))
        return stale

    def get_heartbeat_interval(self) -> float:  # type: ignore[override]  # Event.wait takes seconds as float
        return self._interval_s

    def get_heartbeat_stale_trial_callback(self) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        return self._callback


def _last_sign_of_life(t: FrozenTrial) -> float:
    """The later of the last beat and the start: a retried trial inherits its dead original's old beat, and a
    worker killed before its first beat still has a start time."""
    start = t.datetime_start.astimezone(_dt.timezone.utc).timestamp() if t.datetime_start else 0.0
    return max(float(t.system_attrs.get(BEAT_ATTR, 0.0)), start)


__all__ = ["HeartbeatJournalStorage", "heartbeat_interval_s", "grace_period_s", "has_heartbeat", "retry_callback",
           "BEAT_ATTR", "HEARTBEAT_ENV"]
