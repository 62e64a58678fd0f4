"""Storage strings: checked when parsed (one line each, nothing created), and no secret shown in any URL form."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from mla_tune.cli import app
from mla_tune.errors import StorageError
from mla_tune.runners import register_runner
from mla_tune.storage.urls import StorageSpec, open_storage, parse_storage, redact, scrub

from .fakes import FakeRunner


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLA_TUNE_STORAGE", raising=False)
    return tmp_path


@pytest.mark.parametrize("url, shown", [
    ("postgresql://mla:s3cr3t@db-host/mla_tune", "postgresql://mla:***@db-host/mla_tune"),
    ("postgresql://mla@db-host/mla_tune?password=s3cr3t", "postgresql://mla@db-host/mla_tune?password=***"),
    ("postgresql://mla@h/db?sslmode=verify-full&sslpassword=s3cr3t&sslkey=/home/mla/.pg/mla.key",
     "postgresql://mla@h/db?sslmode=verify-full&sslpassword=***&sslkey=/home/mla/.pg/mla.key"),
    ("postgresql://mla:s%40cr%2F3t@db-host:5432/db", "postgresql://mla:***@db-host:5432/db"),
    ("postgresql+psycopg://mla:s3cr3t@127.0.0.1:5432/db?connect_timeout=5",
     "postgresql+psycopg://mla:***@127.0.0.1:5432/db?connect_timeout=5"),
    ("postgresql://mla:s3/cr?3t@db-host/db", "postgresql://mla:***@db-host/db"),  # unencoded, as SQLAlchemy reads it
    ("postgresql://:s3cr3t@db-host/db", "postgresql://:***@db-host/db"),
    ("postgresql://mla@h/db?pass%77ord=s3cr3t", "postgresql://mla@h/db?pass%77ord=***"),
    ("mysql://mla@h/db?passwd=s3cr3t&charset=utf8", "mysql://mla@h/db?passwd=***&charset=utf8"),
    ("postgresql://mla@db-host/mla_tune", "postgresql://mla@db-host/mla_tune"),
    ("sqlite:///results/studies.db", "sqlite:///results/studies.db"),
    ("results/studies.journal", "results/studies.journal"),
])
def test_redact_hides_every_secret_form(url, shown):
    assert redact(url) == shown
    assert "s3cr3t" not in redact(url) and "s@cr" not in redact(url) and "cr%2F3t" not in redact(url)


def test_scrub_hides_a_secret_a_driver_echoes():
    url = "postgresql://mla:pw@h/db?sslpassword=k%65y"
    text = f"bad option in {url}: password 'pw' or 'key' or k%65y rejected; pwned"
    assert scrub(text, url) == ("bad option in postgresql://mla:***@h/db?sslpassword=***: password '***' or '***' "
                                "or *** rejected; pwned")  # whole words only: "pwned" stays


def test_display_of_a_spec_is_redacted():
    assert StorageSpec("rdb", "postgresql://mla@h/db?password=s3cr3t").display == "postgresql://mla@h/db?password=***"


def test_unreachable_database_error_shows_no_secret():
    with pytest.raises(StorageError) as e:
        open_storage(parse_storage("postgresql://mla@127.0.0.1:1/db?password=s3cr3t"), create=True)
    assert "s3cr3t" not in str(e.value) and "password=***" in str(e.value)


def test_the_storage_line_of_a_successful_run_shows_no_secret(in_tmp):
    register_runner("fake", lambda arg: FakeRunner(optimum={"num_kv_splits": 16}))
    url = "sqlite:///s.db?password=s3cr3t"  # SQLite ignores it (with a warning): a secret in a URL that works
    with pytest.warns(Warning):
        r = CliRunner().invoke(app, ["study", "--backend", "TRITON_MLA", "--workload", "spec:64q1s4k",
                                     "--runner", "fake", "--storage", url])
    assert r.exit_code == 0, r.output
    assert "storage: sqlite:///s.db?password=***" in r.output and "s3cr3t" not in r.output


@pytest.mark.parametrize("text, words", [
    ("sqlite://", ["names no database file", "sqlite:///studies.db"]),
    ("sqlite:///", ["names no database file"]),
    ("sqlite:///:memory:", ["in memory"]),
    ("sqlite:/abs/x.db", ["neither a URL", "sqlite:////abs/x.db"]),
    ("sqlite:x.db", ["neither a URL", "sqlite:///x.db"]),
    ("postgresql:mla@host/db", ["neither a URL"]),
    ("postgres://mla@host/db", ["unsupported storage URL scheme 'postgres'", "postgresql://"]),
    ("redis://localhost/0", ["unsupported storage URL scheme 'redis'"]),
    ("ftp://host/x.journal", ["unsupported storage URL scheme 'ftp'"]),
    ("postgresql://mla:p@ss@host/db", ["more than one '@'", "%40"]),
    ("journal:", ["empty journal file path"]),
    (".", ["is a directory"]),
    ("results/", ["is a directory"]),
    ("sqlite:///.", ["is a directory"]),
    ("/dev/null", ["not a regular file"]),
])
def test_bad_storage_strings_are_one_line_and_create_nothing(in_tmp, text, words):
    with pytest.raises(StorageError) as e:
        parse_storage(text)
    for w in words:
        assert w in str(e.value)
    assert len(str(e.value).splitlines()) == 1 and not list(in_tmp.iterdir())


def test_a_directory_named_as_the_journal_is_refused(in_tmp):
    (in_tmp / "runs").mkdir()
    with pytest.raises(StorageError, match="runs is a directory, not a journal file"):
        parse_storage("runs")
    (in_tmp / "plain").write_text("")
    for below in ("plain/s.journal", "plain/sub/s.journal"):
        with pytest.raises(StorageError, match="plain is not a folder"):
            parse_storage(below)


def test_a_bad_environment_storage_is_refused_naming_the_variable(in_tmp, monkeypatch):
    monkeypatch.setenv("MLA_TUNE_STORAGE", "sqlite://")
    with pytest.raises(StorageError, match="^MLA_TUNE_STORAGE: sqlite:// names no database file"):
        parse_storage(None)
    assert parse_storage("given.journal").target == "given.journal"  # --storage wins over the variable
    for bad in ("postgres://mla:s3cr3t@h/db", "mysql:mla:s3cr3t@h/db", "postgresql://mla:s3@cr3t@h/db"):
        monkeypatch.setenv("MLA_TUNE_STORAGE", bad)
        with pytest.raises(StorageError) as e:
            parse_storage(None)
        assert str(e.value).startswith("MLA_TUNE_STORAGE: ") and "s3cr3t" not in str(e.value) \
            and "cr3t" not in str(e.value)


def test_the_cli_refuses_sqlite_without_a_path_in_one_line_writing_nothing(in_tmp):
    r = CliRunner().invoke(app, ["study", "--backend", "TRITON_MLA", "--workload", "spec:64q1s4k",
                                 "--runner", "replay:/nonexistent", "--storage", "sqlite:/abs/x.db"])
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code != 0 and len(lines) == 1 and "sqlite:////abs/x.db" in lines[0]
    assert not list(in_tmp.iterdir())


def test_good_storage_strings_parse(in_tmp):
    assert parse_storage(None) == StorageSpec("journal", "results/studies.journal")
    assert parse_storage("journal:x:y.journal") == StorageSpec("journal", "x:y.journal")
    assert parse_storage("runs/new/s.journal").kind == "journal"  # a new study's folders are made when it opens
    assert parse_storage("sqlite:///s.db").kind == "rdb" and parse_storage("sqlite:////tmp/s.db").kind == "rdb"
    assert parse_storage("postgresql+psycopg://mla@h:5432/db").kind == "rdb"
    assert not list(in_tmp.iterdir())


def test_a_new_journal_and_sqlite_database_get_their_folders_on_open(in_tmp):
    open_storage(parse_storage("runs/a/s.journal"), create=True)
    open_storage(parse_storage("sqlite:///runs/b/s.db"), create=True)
    assert (in_tmp / "runs/a/s.journal").is_file() and (in_tmp / "runs/b/s.db").is_file()
    with pytest.raises(StorageError, match="no study storage at runs/c/s.journal"):
        open_storage(parse_storage("runs/c/s.journal"), create=False)
    assert not (in_tmp / "runs/c").exists()


def test_a_journal_in_a_folder_that_cannot_be_made_is_one_line(in_tmp, monkeypatch):
    def denied(self, *a, **kw):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(type(in_tmp), "mkdir", denied)
    with pytest.raises(StorageError, match="cannot create folder ro/new for ro/new/s.journal: Permission denied"):
        open_storage(parse_storage("ro/new/s.journal"), create=True)


# -- first use by concurrent processes ------------------------------------------------------------------------------
_FIRST_USE = """
import sys, time
import optuna
from mla_tune.storage.urls import open_storage, parse_storage
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # all at once
store = open_storage(parse_storage(sys.argv[1]), create=True)
study = optuna.create_study(study_name="first-use", storage=store, load_if_exists=True)
study.add_trial(optuna.trial.create_trial(value=1.0))
"""


def _open_at_once(url: str, n: int = 8) -> None:
    """``n`` processes open ``url`` (a fresh database) at the same instant, each creating the schema if missing and
    then adding a trial to one shared study: every one must succeed."""
    import subprocess
    import sys
    import time

    import optuna

    start = str(time.time() + 2.0)  # after every interpreter is up
    procs = [subprocess.Popen([sys.executable, "-c", _FIRST_USE, url, start], stderr=subprocess.PIPE, text=True)
             for _ in range(n)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    failed = [e.strip().splitlines()[-1] for p, e in zip(procs, errors) if p.returncode != 0]
    assert not failed, f"{len(failed)} of {n} failed: {failed[0]}"
    study = optuna.load_study(study_name="first-use", storage=open_storage(parse_storage(url), create=False))
    assert len(study.trials) == n


@pytest.mark.slow
def test_eight_processes_creating_a_new_sqlite_database_at_once_all_succeed(in_tmp):
    _open_at_once(f"sqlite:///{in_tmp / 'fresh.db'}")


@pytest.mark.slow
@pytest.mark.postgres
def test_eight_processes_on_a_fresh_postgresql_database_at_once_all_succeed():
    """Before the advisory lock, 4-7 of 8 died in Optuna's CREATE TABLE (UniqueViolation on
    pg_type_typname_nsp_index). A fresh database here is a new schema of the test database, first on the path."""
    import os
    import uuid

    import sqlalchemy

    base = os.environ["MLA_TUNE_TEST_POSTGRES"]
    schema = f"first_use_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(base, poolclass=sqlalchemy.pool.NullPool)
    with admin.begin() as c:
        c.execute(sqlalchemy.text(f"CREATE SCHEMA {schema}"))
    try:
        _open_at_once(f"{base}{'&' if '?' in base else '?'}options=-csearch_path%3D{schema}")
    finally:
        with admin.begin() as c:
            c.execute(sqlalchemy.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


def test_a_database_that_cannot_be_reached_is_one_line_without_waiting_on_the_schema_lock(in_tmp):
    with pytest.raises(StorageError, match=r"cannot open storage postgresql://mla:\*\*\*@127.0.0.1:1/db: "):
        open_storage(parse_storage("postgresql://mla:pw@127.0.0.1:1/db"), create=True)
