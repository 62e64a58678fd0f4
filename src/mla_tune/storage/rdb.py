"""Opening a database storage (SQLite, PostgreSQL): Optuna's RDBStorage with heartbeats, its schema created safely.

Optuna creates its tables when a storage is first opened, and that is not safe for concurrent processes: on a fresh
database, 8 workers (or hosts) starting at once lost to each other's CREATE TABLE (PostgreSQL: ``UniqueViolation``
on ``pg_type_typname_nsp_index``; SQLite: on ``alembic_version``). PostgreSQL serialises the opening with an
advisory lock; SQLite, which has none, tries again once the winner's schema is there.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Iterator

import optuna

from ..coordination.heartbeat import grace_period_s, heartbeat_interval_s, retry_callback

SCHEMA_LOCK_KEY = 0x6D6C615F74756E65  # "mla_tune": the advisory lock every mla-tune process takes to open a database
SCHEMA_LOCK_TIMEOUT_S = 120
_SQLITE_TRIES = 8


def open_rdb(url: str) -> optuna.storages.RDBStorage:
    """Optuna's RDBStorage for ``url`` (with heartbeats), its schema created (or checked) by one process at a time."""
    from optuna.storages import RDBStorage

    url = _driver(url)

    def make() -> RDBStorage:
        with warnings.catch_warnings():  # heartbeats and their retry callback are flagged experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(url, heartbeat_interval=heartbeat_interval_s(), grace_period=grace_period_s(),
                              heartbeat_stale_trial_callback=retry_callback(), engine_kwargs=_engine_kwargs(url))

    if url.startswith("postgresql"):
        with _advisory_lock(url):
            return make()
    tries = _SQLITE_TRIES if url.startswith("sqlite") else 1
    for attempt in range(tries):
        try:
            return make()
        except Exception as e:  # noqa: BLE001 - told apart by what it says: sqlalchemy wraps the driver's errors
            if attempt == tries - 1 or not _lost_schema_race(e):
                raise
            time.sleep(0.05 * 2 ** attempt)  # the other process has finished the schema by then: 6 s in all at most
    raise AssertionError("unreachable")


def _lost_schema_race(e: Exception) -> bool:
    text = str(e).lower()
    return any(x in text for x in ("unique constraint failed", "already exists", "database is locked"))


@contextlib.contextmanager
def _advisory_lock(url: str) -> Iterator[None]:
    """PostgreSQL's session advisory lock ``SCHEMA_LOCK_KEY`` held on a connection of its own while the body runs
    (waiting at most ``SCHEMA_LOCK_TIMEOUT_S`` for it); released when the body ends, or the process dies."""
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    engine = sqlalchemy.create_engine(url, poolclass=NullPool, **{k: v for k, v in _engine_kwargs(url).items()
                                                                   if k == "connect_args"})
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text(f"SET lock_timeout = '{SCHEMA_LOCK_TIMEOUT_S}s'"))
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
            try:
                yield
            finally:
                with contextlib.suppress(Exception):  # a lost connection has released it already
                    conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": SCHEMA_LOCK_KEY})
    finally:
        engine.dispose()


def _driver(url: str) -> str:
    """``postgresql://`` means psycopg2 to SQLAlchemy; the ``postgres`` extra installs psycopg 3: use it."""
    import importlib.util

    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg2") is None \
            and importlib.util.find_spec("psycopg") is not None:
        return "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


def _engine_kwargs(url: str) -> dict:
    if url.startswith("postgresql"):
        return {"connect_args": {"connect_timeout": 10}, "pool_pre_ping": True}
    return {}


__all__ = ["SCHEMA_LOCK_KEY", "open_rdb"]
