"""The one home of Optuna's private names answers what the rest of mla-tune asks of it."""

from __future__ import annotations

import optuna
from optuna.storages import InMemoryStorage

from mla_tune.storage._optuna_compat import HeartbeatStorage, has_heartbeat, storage_of, study_id, trial_id


def test_storage_and_ids_of_a_study_and_its_trials():
    storage = InMemoryStorage()
    study = optuna.create_study(storage=storage, study_name="s")
    trial = study.ask()
    assert storage_of(study) is storage
    assert study_id(study) == storage.get_study_id_from_name("s")
    assert storage.get_trial(trial_id(trial)).number == trial.number
    assert trial_id(study.get_trials(deepcopy=False)[0]) == trial_id(trial)


class _Beating(InMemoryStorage, HeartbeatStorage):
    def record_heartbeat(self, trial_id: int) -> None:
        pass

    def stale_trial_ids(self, study_id: int) -> list[int]:
        return [study_id, 7]

    def get_heartbeat_interval(self) -> int | None:
        return 1

    def get_heartbeat_stale_trial_callback(self):
        return print


def test_the_heartbeat_hooks_reach_their_public_names():
    storage = _Beating()
    assert storage._get_stale_trial_ids(3) == [3, 7]  # what Optuna's fail_stale_trials calls
    assert has_heartbeat(storage) and not has_heartbeat(InMemoryStorage())
