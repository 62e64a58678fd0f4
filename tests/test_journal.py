"""The journal file: a torn last record cut off and kept, garbage refused naming the line, failed writes one error.

Optuna's own lock and ``JournalStorage`` are used as mla-tune uses them (through ``storage.open_storage``), so
what these tests write is what Optuna reads.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

from mla_tune.errors import StorageError
from mla_tune.storage.journal import (
    JournalCorruptError,
    JournalFile,
    JournalRepairedWarning,
    JournalWriteError,
)
from mla_tune.storage.urls import open_storage, parse_storage


def record(op: int = 0, **kw) -> dict:
    return {"op_code": op, "worker_id": "w-1", **kw}


def journal(path: Path, create: bool = True) -> JournalFile:
    return JournalFile(path, JournalFileOpenLock(str(path)), create=create)


def studies(path: Path, n: int = 3) -> bytes:
    """A real journal written by Optuna: ``n`` studies with a finished trial each; returns its bytes."""
    store = open_storage(parse_storage(str(path)), create=True)
    for i in range(n):
        study = optuna.create_study(study_name=f"s{i}", storage=store)
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    return path.read_bytes()


def names(path: Path) -> list[str]:
    return [s.study_name for s in optuna.get_all_study_summaries(open_storage(parse_storage(str(path)),
                                                                              create=False))]


@pytest.fixture(autouse=True)
def quiet():
    optuna.logging.set_verbosity(optuna.logging.ERROR)


def test_a_torn_last_record_is_cut_kept_and_the_next_writes_land_on_a_new_line(tmp_path):
    path = tmp_path / "s.journal"
    whole = studies(path, 2)
    torn = b'{"op_code":5,"worker_id":"w-1","trial_id":1,"sta'  # a crash mid-write
    path.write_bytes(whole + torn)
    with pytest.warns(JournalRepairedWarning, match=rf"cut off an incomplete last record \({len(torn)} bytes"):
        store = open_storage(parse_storage(str(path)), create=True)
    assert path.read_bytes() == whole
    kept = list(tmp_path.glob("s.journal.torn-*"))
    assert len(kept) == 1 and kept[0].read_bytes() == torn and str(kept[0]) in store.journal.notes[0]
    optuna.create_study(study_name="after", storage=store)
    # Before: Optuna glued the next record onto the torn one and every later open failed with a JSONDecodeError.
    assert names(path) == ["s0", "s1", "after"]
    JournalFileBackend(str(path)).read_logs(0).close()  # still a file Optuna's own backend reads


def test_a_whole_journal_opens_without_the_lock_or_a_note(tmp_path, recwarn):
    path = tmp_path / "s.journal"
    studies(path, 1)
    open_storage(parse_storage(str(path)), create=False)
    assert not recwarn.list and not list(tmp_path.glob("*.torn-*")) and not list(tmp_path.glob("*.lock"))


def test_a_torn_record_left_while_this_process_runs_is_cut_before_its_next_write(tmp_path):
    path = tmp_path / "s.journal"
    store = open_storage(parse_storage(str(path)), create=True)
    optuna.create_study(study_name="a", storage=store)
    with path.open("ab") as f:
        f.write(b'{"op_code":0,"worker_id":"other-host","study_na')  # another worker died mid-write
    with pytest.warns(JournalRepairedWarning):
        optuna.create_study(study_name="b", storage=store)
    assert names(path) == ["a", "b"]


@pytest.mark.parametrize("bad, reason", [
    (b"\x00\xff\xfe binary\n", "not JSON"),
    (b'{"op_code":0,"worker_id":"w-1","study_na\n', "not JSON"),  # a partial object, then a newline
    (b"[" * 100_000 + b"\n", "not JSON"),  # too deep for the parser
    (b"\n", "not JSON"),
    (b'{"hello": "world"}\n', "not an Optuna journal record"),
    (b'{"op_code":4,"worker_id":"w-1"}\n', "a record Optuna cannot replay (KeyError"),
])
def test_a_garbage_line_is_refused_naming_it_and_nothing_is_written(tmp_path, bad, reason):
    path = tmp_path / "s.journal"
    lines = studies(path, 2).splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:3]) + bad + b"".join(lines[3:]))
    before = path.read_bytes()
    for create in (True, False):
        with pytest.raises(JournalCorruptError) as e:
            open_storage(parse_storage(str(path)), create=create)
        assert e.value.line == 4 and reason in str(e.value)
    msg = str(e.value)
    assert len(msg.splitlines()) == 1 and f"{path} line 4" in msg and f"head -n 3 {path} > {path}.cut" in msg
    assert path.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["s.journal"]


def test_garbage_as_the_last_line_is_refused_too(tmp_path):
    """Optuna's reader skips it silently and appends after it: the next open then fails for good."""
    path = tmp_path / "s.journal"
    n = len(studies(path, 1).splitlines())
    with path.open("ab") as f:
        f.write(b'{"op_code":0,"worker_\n')
    with pytest.raises(JournalCorruptError, match=f"line {n + 1}: not JSON"):
        open_storage(parse_storage(str(path)), create=True)


def test_a_file_that_is_no_journal_is_refused_not_cut(tmp_path):
    path = tmp_path / "table.yaml"
    path.write_bytes(b"backend: TRITON_MLA\nentries: []")  # no final newline: not a torn record either
    with pytest.raises(JournalCorruptError, match="line 1: not JSON"):
        open_storage(parse_storage(str(path)), create=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64).replace(b"\n", b""))
    with pytest.raises(JournalCorruptError, match="line 1"):
        open_storage(parse_storage(str(path)), create=True)
    assert sorted(os.listdir(tmp_path)) == ["table.yaml"]


def test_a_torn_tail_that_is_not_a_record_start_is_refused(tmp_path):
    path = tmp_path / "s.journal"
    j = journal(path)
    j.append_logs([record()])
    with path.open("ab") as f:
        f.write(b"garbage without a newline")
    with pytest.raises(JournalCorruptError, match="line 2: the last line has no newline"):
        j.repair()
    assert path.read_bytes().endswith(b"garbage without a newline")


def test_reading_skips_a_record_being_written_and_resumes_where_it_stopped(tmp_path):
    path = tmp_path / "j"
    j = journal(path)
    j.append_logs([record(0, n=1), record(0, n=2)])
    with path.open("ab") as f:
        f.write(b'{"op_code":0,"wor')  # another writer, mid-record: readers take no lock
    assert [r["n"] for r in j.read_logs(0)] == [1, 2]
    assert [r["n"] for r in j.read_logs(1)] == [2]
    with path.open("ab") as f:
        f.write(b'ker_id":"x","n":3}\n')
    assert [r["n"] for r in j.read_logs(2)] == [3]
    assert [r["n"] for r in journal(path).read_logs(1)] == [2, 3]  # a fresh reader finds line 2 by counting


def test_a_failed_write_is_one_error_keeps_what_was_written_and_writes_nothing_more(tmp_path, monkeypatch):
    path = tmp_path / "j"
    j = journal(path)
    j.append_logs([record(n=1)])
    real_write = os.write

    def full_disk(fd, data):
        real_write(fd, bytes(data[:7]))  # part of the record reaches the disk
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(JournalWriteError) as e:
        j.append_logs([record(n=2)])
    monkeypatch.setattr(os, "write", real_write)
    msg = str(e.value)
    assert isinstance(e.value, StorageError) and len(msg.splitlines()) == 1
    assert f"cannot write journal {path}: No space left on device (ENOSPC)" in msg and "run the same command" in msg
    with pytest.raises(JournalWriteError):
        j.append_logs([record(n=3)])  # never again from this object: its torn record is the next opener's
    assert path.read_bytes() == json.dumps(record(n=1), separators=(",", ":")).encode() + b'\n{"op_co'
    assert not (tmp_path / "j.lock").exists()  # the lock was released
    with pytest.warns(JournalRepairedWarning):
        assert journal(path).repair() is not None
    assert [r["n"] for r in journal(path).read_logs(0)] == [1]


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES, errno.EFBIG])
def test_every_write_errno_is_a_journal_write_error(tmp_path, monkeypatch, code):
    path = tmp_path / "j"
    j = journal(path)
    monkeypatch.setattr(os, "write", lambda fd, data: (_ for _ in ()).throw(OSError(code, os.strerror(code))))
    with pytest.raises(JournalWriteError, match=errno.errorcode[code]):
        j.append_logs([record()])


def test_python_ignores_sigxfsz_so_a_file_size_limit_is_an_oserror():
    """``ulimit -f``: the kernel sends SIGXFSZ, which kills by default; CPython sets it to SIG_IGN at start-up."""
    probe = "import signal; print(signal.getsignal(signal.SIGXFSZ) is signal.SIG_IGN)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
    assert signal.getsignal(signal.SIGXFSZ) is signal.SIG_IGN


def test_a_file_size_limit_mid_record_leaves_whole_records_and_a_torn_one_the_next_open_cuts(tmp_path):
    path = tmp_path / "j"
    child = textwrap.dedent(f"""
        import resource
        from optuna.storages.journal import JournalFileOpenLock
        from mla_tune.storage.journal import JournalFile, JournalWriteError
        resource.setrlimit(resource.RLIMIT_FSIZE, (3000, 3000))
        j = JournalFile({str(path)!r}, JournalFileOpenLock({str(path)!r}), create=True)
        try:
            for n in range(1000):
                j.append_logs([{{"op_code": 0, "worker_id": "w", "n": n, "pad": "x" * 70}}])
        except JournalWriteError as e:
            print(e)
    """)
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0 and "File too large (EFBIG)" in out.stdout, out.stderr
    assert path.stat().st_size == 3000 and not path.read_bytes().endswith(b"\n")
    with pytest.warns(JournalRepairedWarning):
        journal(path).repair()
    ns = [r["n"] for r in journal(path).read_logs(0)]
    assert ns == list(range(len(ns))) and len(ns) > 20


class _ReadOnlyLock:
    def acquire(self) -> bool:
        raise OSError(errno.EROFS, "Read-only file system")

    def release(self) -> None:
        raise AssertionError("never acquired")


def test_a_reader_leaves_a_torn_journal_it_cannot_write_as_it_is(tmp_path):
    path = tmp_path / "j"
    path.write_bytes(b'{"op_code":0,"worker_id":"w"}\n{"op_co')
    reader = JournalFile(path, _ReadOnlyLock(), create=False)
    assert reader.repair(required=False) is None and [r["op_code"] for r in reader.read_logs(0)] == [0]
    with pytest.raises(StorageError, match="cannot be cut off here: Read-only file system"):
        JournalFile(path, _ReadOnlyLock(), create=False).repair(required=True)
