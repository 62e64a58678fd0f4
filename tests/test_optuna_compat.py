"""The one home of Optuna's private names answers what the rest of mla-tune asks of it."""

from __future__ import annotations

import optuna
import pytest
from optuna.storages import InMemoryStorage

from mla_tune._optuna_compat import HeartbeatStorage, has_heartbeat, storage_of, study_id, trial_id


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


@pytest.mark.parametrize("kind", ["journal", "sqlite", "memory"])
def test_set_user_attrs_writes_them_all_and_in_one_journal_append(tmp_path, kind, monkeypatch):
    from mla_tune._optuna_compat import set_user_attrs
    from mla_tune.storage.urls import open_storage, parse_storage

    url = {"journal": str(tmp_path / "s.journal"), "sqlite": f"sqlite:///{tmp_path / 's.db'}"}.get(kind)
    storage = open_storage(parse_storage(url), create=True) if url else optuna.storages.InMemoryStorage()
    study = optuna.create_study(study_name="s", storage=storage)
    trial = study.ask()
    appends = []
    if kind == "journal":
        backend = storage._backend
        real = backend.append_logs
        monkeypatch.setattr(backend, "append_logs", lambda logs: (appends.append(len(logs)), real(logs))[1])
    attrs = {"status": "ok", "key": "[{}]", "median_ms": 0.25, "details": {"drift": "+0.1%"}}
    set_user_attrs(trial, attrs)
    assert trial.user_attrs == attrs  # the trial's own copy, as Trial.set_user_attr keeps it
    if kind == "journal":
        assert appends == [len(attrs)]
        storage = open_storage(parse_storage(url), create=False)  # read back from the file
    assert optuna.load_study(study_name="s", storage=storage).trials[0].user_attrs == attrs if kind != "memory" \
        else study.trials[0].user_attrs == attrs
    study.tell(trial, 1.0)
    with pytest.raises(RuntimeError):  # UpdateFinishedTrialError: a finished trial takes no more attrs
        set_user_attrs(trial, {"late": 1, "later": 2})
