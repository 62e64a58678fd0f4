"""Optuna's private names, used from here only: when an Optuna release renames one, this module changes.

mla-tune needs a few: the storage and ids behind a ``Study`` or ``Trial`` (Optuna has no public way to write a
system attr or to read one trial by id), and the heartbeat interface, which Optuna keeps in a private module
although storages are meant to implement it (see ``heartbeat``). Written against Optuna 4.9+, whose
``RetryHeartbeatStaleTrialCallback`` and ``get_heartbeat_stale_trial_callback`` mla-tune uses.
"""

from __future__ import annotations

import abc
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.trial import FrozenTrial, Trial, TrialState


def storage_of(study: optuna.Study) -> BaseStorage:
    """The storage a study reads and writes."""
    return study._storage


def study_id(study: optuna.Study) -> int:
    """The study's id in its storage (what the storage's study methods take)."""
    return study._study_id


def trial_id(trial: Trial | FrozenTrial) -> int:
    """The trial's id in its storage (what the storage's trial methods take; not its ``number``)."""
    return trial._trial_id


def enqueue(study: optuna.Study, params: dict[str, Any], *, user_attrs: dict[str, Any],
            system_attrs: dict[str, Any]) -> None:
    """``study.enqueue_trial`` with system attrs of our own on the queued trial (Optuna keeps the params to use in
    its system attr ``fixed_params``, as ``enqueue_trial`` does)."""
    study.add_trial(optuna.trial.create_trial(state=TrialState.WAITING, user_attrs=user_attrs,
                                              system_attrs={**system_attrs, "fixed_params": params}))


def set_user_attrs(trial: Trial, attrs: dict[str, Any]) -> None:
    """``trial.set_user_attr`` for each of ``attrs``, in one append where the storage is a journal: one lock and one
    fsync for a trial's result (about 15 attrs) instead of one each, which was half of a trial's overhead on a
    2-core host. The records are the ones ``JournalStorage.set_trial_user_attr`` writes (one attr each, as Optuna's
    replay asserts), and the trial's cached copy is updated as ``Trial.set_user_attr`` does."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal._storage import JournalOperation

    storage = trial.storage
    if not isinstance(storage, JournalStorage) or len(attrs) < 2:
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        return
    worker_id = storage._replay_result.worker_id
    logs = [{"op_code": JournalOperation.SET_TRIAL_USER_ATTR, "worker_id": worker_id, "trial_id": trial._trial_id,
             "user_attr": {key: value}} for key, value in attrs.items()]
    with storage._thread_lock:
        storage._backend.append_logs(logs)
        storage._sync_with_backend()  # raises UpdateFinishedTrialError as one write would, if the trial is finished
    trial._cached_frozen_trial.user_attrs.update(attrs)


class HeartbeatStorage(BaseHeartbeat):
    """Optuna's heartbeat interface, with its private hook ``_get_stale_trial_ids`` under a public name."""

    @abc.abstractmethod
    def stale_trial_ids(self, study_id: int) -> list[int]:
        """The RUNNING trials of the study whose worker stopped beating."""

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        return self.stale_trial_ids(study_id)


def has_heartbeat(storage: BaseStorage) -> bool:
    """Does Optuna run heartbeats (and fail stale trials) on this storage?"""
    return isinstance(storage, BaseHeartbeat) and storage.get_heartbeat_interval() is not None


__all__ = ["HeartbeatStorage", "enqueue", "has_heartbeat", "set_user_attrs", "storage_of", "study_id", "trial_id"]
