"""Opening Optuna storages from the one string users give: a journal file path or a database URL.

Default: one journal file under ``results/`` (nothing to start). On a 2-core machine Optuna's SQLite storage
costs about 30-40 ms per trial and its journal file about 4-6 ms, while one GPU measurement takes 10-20 ms,
so the journal file keeps storage from becoming the bottleneck (bench/storage_overhead.py measures it).
The string is checked when parsed, before anything is created: a mistyped path or URL is one line, not a new
empty storage somewhere else. Every URL shown to a user goes through ``redact``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote_plus

import optuna
from optuna.storages.journal import BaseJournalBackend, JournalFileOpenLock

from .. import env
from ..coordination.heartbeat import (
    HeartbeatJournalStorage,
    grace_period_s,
    heartbeat_interval_s,
    retry_callback,
)
from ..errors import StorageError
from .journal import JournalCorruptError, JournalFile, JournalWriteError
from .rdb import open_rdb

DEFAULT_STORAGE = "results/studies.journal"
STORAGE_ENV = env.STORAGE
_RDB_SCHEMES = ("sqlite", "postgresql", "mysql")
# Scheme-like prefixes that are never meant as a file name (``sqlite:/x.db`` would be a journal in ``sqlite:/``).
_URL_LIKE = _RDB_SCHEMES + ("postgres", "mariadb", "mssql", "oracle", "redis", "file", "http", "https")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):(//)?")
_SECRET_KEY = re.compile(r"pass|pwd|secret|token", re.IGNORECASE)  # password, sslpassword, passwd, ...
_QUERY_PARAM = re.compile(r"([?&;])([^=&;#]*)=([^&;#]*)")
URL_HINT = "a journal file path, sqlite:///relative.db, sqlite:////absolute.db or postgresql://user@host/db"

BaseJournalBackend.register(JournalFile)  # Optuna's backend interface, implemented without importing Optuna


@dataclass(frozen=True)
class StorageSpec:
    """A parsed, checked storage string: ``kind`` is ``journal`` or ``rdb``; ``target`` a file path or a URL."""

    kind: str
    target: str

    @property
    def concurrent_safe(self) -> bool:
        """Safe for several writer processes: journal files (with their lock) and server databases."""
        return self.kind == "journal" or not self.target.startswith("sqlite")

    @property
    def display(self) -> str:
        return self.target if self.kind == "journal" else redact(self.target)


def parse_storage(text: str | None) -> StorageSpec:
    """``text``, else ``$MLA_TUNE_STORAGE``, else the default journal, checked: a bad one is one StorageError."""
    try:
        raw = None if text else env.storage()
    except env.EnvError:  # its message would show the value, and a URL's password with it
        raise StorageError(f"{STORAGE_ENV}: not one line of at most {env.MAX_TEXT} characters",
                           hint=f"fix or unset {STORAGE_ENV}") from None
    if raw is None:
        return _checked(text or DEFAULT_STORAGE)
    try:
        return _checked(raw)
    except StorageError as e:
        raise StorageError(f"{STORAGE_ENV}: {e.message}", hint=e.hint) from None


def _checked(text: str) -> StorageSpec:
    if text.startswith("journal:"):
        spec = StorageSpec("journal", text[len("journal:"):])
    else:
        m = _SCHEME.match(text)
        scheme = m.group(1).lower().split("+", 1)[0] if m else ""
        if m and m.group(2):
            if scheme not in _RDB_SCHEMES:
                better = " (postgresql://, as SQLAlchemy spells it)" if scheme == "postgres" else ""
                raise StorageError(f"unsupported storage URL scheme {m.group(1)!r}{better}", hint=f"use {URL_HINT}")
            spec = StorageSpec("rdb", text)
        elif m and scheme in _URL_LIKE:
            raise StorageError(f"storage {redact(text)!r} is neither a URL (no //) nor meant as a file name",
                               hint=f"did you mean {redact(m.group(1) + ':///' + text[m.end():])}? (four "
                                    "slashes before an absolute path)")
        else:
            spec = StorageSpec("journal", text)
    _check_target(spec)
    return spec


def _check_target(spec: StorageSpec) -> None:
    if spec.kind == "journal":
        _check_file(spec.target, "journal file")
    elif spec.target.lower().startswith("sqlite"):
        path = spec.target.split("://", 1)[1]
        db = path[1:].split("?", 1)[0] if path.startswith("/") else ""
        if not db or db == ":memory:":
            raise StorageError(f"{spec.target} names no database file (SQLite in memory: every trial lost on exit)",
                               hint="sqlite:///studies.db (relative to here) or sqlite:////abs/path/studies.db")
        _check_file(db, "SQLite database")
    else:
        userinfo = spec.target.split("://", 1)[1].rpartition("@")[0]
        if "@" in userinfo:
            raise StorageError(f"storage URL {redact(spec.target)} has more than one '@'",
                               hint="percent-encode '@' in a user name, password or parameter as %40")


def _check_file(text: str, what: str) -> None:
    if not text:
        raise StorageError(f"empty {what} path", hint=f"e.g. {DEFAULT_STORAGE}")
    path = Path(text)
    if text.endswith("/") or path.is_dir():
        raise StorageError(f"{text} is a directory, not a {what}",
                           hint=f"e.g. --storage {path / 'studies.journal'}")
    if path.exists() and not path.is_file():
        raise StorageError(f"{text} is not a regular file (a {what} must be one)")
    above = next(p for p in path.parents if p.exists())  # the folders below it are made when a study opens
    if not above.is_dir():
        raise StorageError(f"{above} is not a folder, so it cannot hold the {what} {text}")


def _make_folder(path: Path) -> None:
    """A new storage's missing folders are made (the README's first command writes into results/demo/)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StorageError(f"cannot create folder {path.parent} for {path}: {e.strerror or e}") from None


def open_storage(spec: StorageSpec, *, create: bool) -> optuna.storages.BaseStorage:
    """Open ``spec``; with ``create=False`` a missing journal file or SQLite database is an error, not a new file.

    Both kinds get Optuna's heartbeats: a trial whose worker stops beating is failed and retried once. A journal
    file is replayed (a garbage line refused, naming it) and a torn last record cut off: see ``journal``.
    """
    if spec.kind == "journal":
        return _open_journal(spec, create=create)
    db = storage_file(spec)
    if db is not None:
        if not create and not db.is_file():
            raise StorageError(f"no SQLite database at {db}")
        if create:
            _make_folder(db)
    try:
        return open_rdb(spec.target)
    except Exception as e:  # noqa: BLE001 - sqlalchemy raises many kinds; the user needs one line
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StorageError(f"cannot open storage {spec.display}: {scrub(reason, spec.target)}") from None


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
    if not create and not path.is_file():
        raise StorageError(f"no study storage at {path}", hint=_missing_hint(path))
    if create:
        _make_folder(path)
    try:
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


ARTIFACTS_SUFFIX = ".artifacts"


def storage_file(spec: StorageSpec) -> Path | None:
    """The file a storage lives in: the journal, or a SQLite database; None for a database server."""
    if spec.kind == "journal":
        return Path(spec.target)
    if spec.target.lower().startswith("sqlite"):
        return Path(spec.target.split(":///", 1)[1].split("?", 1)[0])
    return None


def artifact_dir(spec: StorageSpec) -> Path | None:
    """Where a storage's Optuna artifacts (the plots optuna-dashboard shows) live: ``<journal>.artifacts/``, or
    ``<database>.artifacts/`` next to a SQLite file; None for a database server, which has no folder here."""
    path = storage_file(spec)
    return None if path is None else path.with_name(path.name + ARTIFACTS_SUFFIX)


def attach_file(store: optuna.storages.BaseStorage, study_name: str, path: Path, directory: Path) -> None:
    """Attach ``path`` to a study as an Optuna artifact kept in ``directory``. A file of the same name attached
    before is replaced in place (its artifact id kept), so attaching again never piles copies up."""
    from optuna.artifacts import FileSystemArtifactStore, get_all_artifact_meta, upload_artifact

    directory.mkdir(parents=True, exist_ok=True)
    artifacts = FileSystemArtifactStore(str(directory))
    study = optuna.load_study(study_name=study_name, storage=store)
    try:
        attached = get_all_artifact_meta(study)
    except (TypeError, KeyError):  # an artifact deleted in optuna-dashboard leaves a null record Optuna cannot read
        attached = []
    for meta in attached:
        if meta.filename == path.name:
            with open(path, "rb") as f:
                artifacts.write(meta.artifact_id, f)
            return
    upload_artifact(artifact_store=artifacts, file_path=str(path), study_or_trial=study)


def _missing_hint(path: Path) -> str:
    """How to find the studies: the journals next to the missing one (the README's demo writes
    results/demo/studies.journal), else run a study first."""
    near = sorted(str(p) for p in path.parent.glob(f"*/{path.name}"))[:4] if path.parent.is_dir() else []
    if near:
        return f"pass one with --storage: {', '.join(near)}"
    return "run `mla-tune study` first or pass --storage"


def redact(url: str) -> str:
    """``url`` with its password and every secret parameter (password=, sslpassword=, ...) shown as ``***``.

    The password is everything between the user's ``:`` and the last ``@``, as SQLAlchemy reads it, so an
    unencoded ``/``, ``?`` or ``@`` in it is hidden too. A path, or a URL without secrets, comes back unchanged.
    """
    m = _SCHEME.match(url)
    if not m:
        return url
    head, rest = url[:m.end()], url[m.end():]
    userinfo, at, host = rest.rpartition("@")
    if at and ":" in userinfo:
        rest = f"{userinfo.split(':', 1)[0]}:***@{host}"
    before, q, query = rest.partition("?")
    if q:
        rest = before + _QUERY_PARAM.sub(_hide_param, "?" + query)
    return head + rest


def _hide_param(m: re.Match) -> str:
    sep, key, value = m.groups()
    return f"{sep}{key}={'***' if _SECRET_KEY.search(unquote_plus(key)) else value}"


def _secrets(url: str) -> list[str]:
    """The secret values in ``url``, raw and percent-decoded."""
    m = _SCHEME.match(url)
    rest = url[m.end():] if m else url
    userinfo, at, _ = rest.rpartition("@")
    found = [userinfo.split(":", 1)[1]] if at and ":" in userinfo else []
    found += [v for _, k, v in _QUERY_PARAM.findall("?" + rest.partition("?")[2]) if _SECRET_KEY.search(unquote_plus(k))]
    return sorted({s for v in found for s in (v, unquote_plus(v)) if s}, key=len, reverse=True)


def scrub(text: str, url: str) -> str:
    """``text`` (a driver's error message) with ``url`` redacted and its secrets hidden wherever they appear."""
    text = text.replace(url, redact(url))
    for secret in _secrets(url):
        text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(secret)}(?![A-Za-z0-9])", "***", text)
    return text
