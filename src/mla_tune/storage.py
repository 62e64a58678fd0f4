"""Opening Optuna storages from the one string users give: a journal file path or a database URL.

Default: one journal file under ``results/`` (nothing to start). On a 2-core machine Optuna's SQLite storage
costs about 30-40 ms per trial and its journal file about 4-6 ms, while one GPU measurement takes 10-20 ms,
so the journal file keeps storage from becoming the bottleneck (bench/storage_overhead.py measures it).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.storages.journal import BaseJournalBackend, JournalFileOpenLock

from .errors import StorageError
from .heartbeat import HeartbeatJournalStorage, grace_period_s, heartbeat_interval_s, retry_callback
from .journal import JournalCorruptError, JournalFile, JournalWriteError

DEFAULT_STORAGE = "results/studies.journal"
_RDB_SCHEMES = ("sqlite", "postgresql", "mysql")

BaseJournalBackend.register(JournalFile)  # Optuna's backend interface, implemented without importing Optuna


@dataclass(frozen=True)
class StorageSpec:
    """A parsed storage string: ``kind`` is ``journal`` or ``rdb``; ``target`` a file path or a URL."""

    kind: str
    target: str

    @property
    def concurrent_safe(self) -> bool:
        """Safe for several writer processes: journal files (with their lock) and server databases."""
        return self.kind == "journal" or not self.target.startswith("sqlite")

    @property
    def display(self) -> str:
        return self.target if self.kind == "journal" else _redact(self.target)


def parse_storage(text: str | None) -> StorageSpec:
    text = text or os.environ.get("MLA_TUNE_STORAGE") or DEFAULT_STORAGE
    if text.startswith("journal:"):
        return StorageSpec("journal", text[len("journal:"):])
    scheme = text.split(":", 1)[0].split("+", 1)[0]
    if "://" in text:
        if scheme not in _RDB_SCHEMES:
            raise StorageError(f"unsupported storage URL scheme {scheme!r}",
                               hint="use a journal file path, sqlite:///, postgresql:// or mysql://")
        return StorageSpec("rdb", text)
    return StorageSpec("journal", text)


def open_storage(spec: StorageSpec, *, create: bool) -> optuna.storages.BaseStorage:
    """Open ``spec``; with ``create=False`` a missing journal file or SQLite database is an error, not a new file.

    Both kinds get Optuna's heartbeats: a trial whose worker stops beating is failed and retried once. A journal
    file is replayed (a garbage line refused, naming it) and a torn last record cut off: see ``journal``.
    """
    if spec.kind == "journal":
        return _open_journal(spec, create=create)
    if spec.target.startswith("sqlite:///") and not create:
        db = spec.target[len("sqlite:///"):]
        if not Path(db).is_file():
            raise StorageError(f"no SQLite database at {db}")
    from optuna.storages import RDBStorage

    try:
        with warnings.catch_warnings():  # heartbeats and their retry callback are flagged experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(_driver(spec.target), heartbeat_interval=heartbeat_interval_s(), grace_period=grace_period_s(),
                              heartbeat_stale_trial_callback=retry_callback(),
                              engine_kwargs=_engine_kwargs(spec.target))
    except Exception as e:  # sqlalchemy raises many kinds; the user needs one line
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StorageError(f"cannot open storage {spec.display}: {reason}") from e


class CheckedJournalStorage(HeartbeatJournalStorage):
    """The journal storage mla-tune opens: ``journal`` is the file, with its repair ``notes``."""

    def __init__(self, journal: JournalFile, **kw) -> None:
        self.journal = journal
        super().__init__(journal, **kw)

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            super().record_heartbeat(trial_id)
        except JournalWriteError:
            pass  # Optuna's beat thread would print a traceback; the main thread's next write says it in one line


def _open_journal(spec: StorageSpec, *, create: bool) -> CheckedJournalStorage:
    path = Path(spec.target)
    if path.is_dir():
        raise StorageError(f"{path} is a directory, not a journal file",
                           hint=f"e.g. --storage {path / 'studies.journal'}")
    if not create and not path.is_file():
        raise StorageError(f"no study storage at {path}", hint="run `mla-tune study` first or pass --storage")
    try:
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
        # The open lock (O_EXCL lock file) works on local disks and NFSv3+, unlike symlink locks on some FUSE mounts.
        journal = JournalFile(path, JournalFileOpenLock(str(path)), create=create)
    except OSError as e:
        raise StorageError(f"cannot open journal {path}: {e.strerror or e}") from None
    try:
        # Optuna replays the whole file here: a garbage line is refused before anything is written or cut.
        storage = CheckedJournalStorage(journal, interval_s=heartbeat_interval_s(), grace_s=grace_period_s(),
                                        callback=retry_callback())
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, AssertionError) as e:
        raise JournalCorruptError(path, journal.line, f"a record Optuna cannot replay ({type(e).__name__}: {e})") \
            from None
    journal.repair(required=create)
    return storage


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


def _redact(url: str) -> str:
    """Hide a password in a URL before it reaches a terminal or a file."""
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in creds else url
