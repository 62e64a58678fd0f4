"""Optuna's own storage conformance suite (``optuna.testing.pytest_storages.StorageTestCase``), run against every
storage mla-tune opens: its journal file (torn-tail repair, heartbeats), SQLite and PostgreSQL (heartbeats, the
schema created under mla-tune's lock). Each test gets a fresh, empty storage."""

from __future__ import annotations

import os
import uuid

import pytest
from optuna.testing.pytest_storages import StorageTestCase

from mla_tune.storage.urls import open_storage, parse_storage


def _fresh_postgres_schema(request: pytest.FixtureRequest) -> str:
    """A new schema of the test database, first on the search path: an empty storage per test."""
    import sqlalchemy

    base = os.environ["MLA_TUNE_TEST_POSTGRES"]
    schema = f"conformance_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(base, poolclass=sqlalchemy.pool.NullPool)
    with admin.begin() as c:
        c.execute(sqlalchemy.text(f"CREATE SCHEMA {schema}"))

    def drop() -> None:
        with admin.begin() as c:
            c.execute(sqlalchemy.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()

    request.addfinalizer(drop)
    return f"{base}{'&' if '?' in base else '?'}options=-csearch_path%3D{schema}"


@pytest.fixture(params=["journal", "sqlite", pytest.param("postgres", marks=[pytest.mark.postgres, pytest.mark.slow])])
def storage(request, tmp_path):
    url = {"journal": lambda: str(tmp_path / "s.journal"), "sqlite": lambda: f"sqlite:///{tmp_path / 's.db'}",
           "postgres": lambda: _fresh_postgres_schema(request)}[request.param]()
    store = open_storage(parse_storage(url), create=True)
    yield store
    engine = getattr(store, "engine", None)
    if engine is not None:
        engine.dispose()  # before the schema is dropped


class TestMlaTuneStorages(StorageTestCase):
    pass
