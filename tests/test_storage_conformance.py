"""Optuna's own storage conformance suite (``optuna.testing.pytest_storages.StorageTestCase``), run once against each
storage mla-tune hands to Optuna, built as ``storage.urls.open_storage`` builds it: the checked journal file (with
its heartbeats), SQLite and PostgreSQL (``RDBStorage`` with heartbeats, the retry callback and the engine options).

An Optuna release that adds a storage test runs here unchanged; a test that fails is a bug in the wrapper, or a
deliberate difference to be marked ``xfail(strict=True)`` with its reason, never skipped.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.storages import RDBStorage
from optuna.testing.pytest_storages import StorageTestCase

from mla_tune.coordination.heartbeat import HeartbeatJournalStorage, has_heartbeat, retry_callback
from mla_tune.storage.urls import CheckedJournalStorage, open_storage, parse_storage

PG = os.environ.get("MLA_TUNE_TEST_POSTGRES")


def _opened(text: str) -> optuna.storages.BaseStorage:
    return open_storage(parse_storage(text), create=True)


class TestCheckedJournalStorage(StorageTestCase):
    """A journal file path, the default storage (``results/studies.journal``)."""

    @pytest.fixture
    def storage(self, tmp_path: Path) -> optuna.storages.BaseStorage:
        store = _opened(str(tmp_path / "sub" / "studies.journal"))  # a missing folder, as the README's demo has
        assert isinstance(store, CheckedJournalStorage) and isinstance(store, HeartbeatJournalStorage)
        return store


class TestSQLiteStorage(StorageTestCase):
    """``sqlite:////abs/path.db``: Optuna's ``RDBStorage`` with mla-tune's heartbeats and retry callback."""

    @pytest.fixture
    def storage(self, tmp_path: Path) -> Iterator[optuna.storages.BaseStorage]:
        store = _opened(f"sqlite:///{tmp_path / 'studies.db'}")
        assert isinstance(store, RDBStorage) and store.get_heartbeat_interval() is not None
        yield store
        store.engine.dispose()


@pytest.mark.postgres
class TestPostgreSQLStorage(StorageTestCase):
    """``$MLA_TUNE_TEST_POSTGRES``: ``RDBStorage`` on a real server, with the engine options ``urls`` sets."""

    @pytest.fixture
    def storage(self) -> Iterator[optuna.storages.BaseStorage]:
        store = _opened(PG or "")
        assert isinstance(store, RDBStorage) and store.get_heartbeat_interval() is not None
        _delete_all_studies(store)  # Optuna's tests count every study in the storage: start from none
        yield store
        _delete_all_studies(store)
        store.engine.dispose()


def _delete_all_studies(store: optuna.storages.BaseStorage) -> None:
    for s in store.get_all_studies():
        store.delete_study(store.get_study_id_from_name(s.study_name))


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_a_pickled_storage_keeps_its_heartbeats_and_retries(kind, tmp_path):
    """Optuna's pickle test checks the data; mla-tune's crash recovery also needs the beat and the retry back."""
    store = _opened(str(tmp_path / "s.journal") if kind == "journal" else f"sqlite:///{tmp_path / 's.db'}")
    restored = pickle.loads(pickle.dumps(store))
    assert has_heartbeat(restored)
    assert restored.get_heartbeat_interval() == store.get_heartbeat_interval()
    assert type(restored.get_heartbeat_stale_trial_callback()) is type(retry_callback())
