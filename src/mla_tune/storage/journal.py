"""A journal file that survives crashes and full disks: Optuna's file format and lock, plus three guarantees.

Optuna's ``JournalFileBackend`` appends one JSON record per line under its lock file. Its reader skips an
incomplete last line (a crash or a full disk mid-write), but its writer appends after it, gluing the next record
onto the torn one; from the next record on, every read of the file fails. ``JournalFile`` keeps the format and
the lock and adds: (1) a torn last record is cut off, under the lock, before anything is appended (its bytes
kept in ``<journal>.torn-<UTC time>``); (2) a complete line that is not a journal record is refused with one
line naming the file and line, found while Optuna replays the log anyway (no second pass over the file);
(3) a failed write (ENOSPC, EFBIG under ``ulimit -f``, EROFS, EACCES) is one ``StorageError``, the records
already written are kept, and this object writes nothing more. Python ignores SIGXFSZ at start-up, so a
process over ``ulimit -f`` gets EFBIG rather than being killed.

It imports nothing from Optuna: ``storage`` hands in Optuna's lock and gives this file to ``JournalStorage``.
"""

from __future__ import annotations

import errno
import json
import os
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from ..errors import StorageError

RECORD_START = b'{"op_code"'  # every record Optuna writes begins so (json.dumps of {"op_code": ..., ...})
TORN_SUFFIX = ".torn-"
_TAIL_LIMIT = 64 << 20  # no record is this long: a "last line" longer than this is not a torn record


class JournalCorruptError(StorageError):
    """A complete line of a journal file that is not a journal record; nothing was written."""

    def __init__(self, path: str | os.PathLike, line: int, reason: str) -> None:
        self.path, self.line, self.reason = str(path), line, reason
        cut = (f", or cut it at that line (head -n {line - 1} {path} > {path}.cut && mv {path}.cut {path}), losing "
               "the records after it" if line > 1 else "")
        super().__init__(f"journal {path} line {line}: {reason}; nothing was written",
                         hint=f"move it away (mv {path} {path}.bad) to start a new one{cut}")


class JournalWriteError(StorageError):
    """Writing to a journal file failed; the records written before are kept, the next opener cuts a torn one."""

    def __init__(self, path: str | os.PathLike, cause: OSError) -> None:
        self.path, self.cause = str(path), cause
        code = errno.errorcode.get(cause.errno or 0, "")
        why = f"{cause.strerror or cause}" + (f" ({code})" if code else "")
        super().__init__(f"cannot write journal {path}: {why}; every record written before is kept",
                         hint="free disk space, raise `ulimit -f` or make the file writable, then run the same "
                              "command again: it cuts the incomplete last record and resumes")


class JournalRepairedWarning(UserWarning):
    """A torn last record was cut off a journal file; the message is one line saying where its bytes are."""


class Lock(Protocol):
    """Optuna's journal file locks (``JournalFileOpenLock``, ``JournalFileSymlinkLock``)."""

    def acquire(self) -> bool: ...

    def release(self) -> None: ...


class JournalFile:
    """Optuna's ``BaseJournalBackend`` for one file (``storage`` registers it as one), with the guarantees above.

    ``notes`` collects the one-line repair notes, each also issued as a ``JournalRepairedWarning``.
    """

    def __init__(self, path: str | os.PathLike, lock: Lock, *, create: bool) -> None:
        self.path, self._lock = Path(path), lock
        self.notes: list[str] = []
        self.line = 0  # the line of the last record handed out: the one to blame when Optuna cannot replay it
        self._resume = (0, 0)  # (records read, byte offset after them): the next read starts there
        self._failed: OSError | None = None
        if create and not self.path.exists():
            open(self.path, "ab").close()

    # -- reading: Optuna calls this with the number of records it has already applied --------------------------

    def read_logs(self, log_number_from: int) -> Iterator[dict[str, Any]]:
        number, offset = self._resume if self._resume[0] == log_number_from else (0, 0)
        with _open_to_read(self.path) as f:
            size = os.fstat(f.fileno()).st_size  # lines appended while this runs are left to the next read
            f.seek(offset)
            for line in f:
                offset += len(line)
                if offset > size or not line.endswith(b"\n"):
                    return  # a record being written now (readers take no lock), or a torn one the next writer cuts
                number += 1
                if number > log_number_from:
                    record = _parse(line, self.path, number)
                    self._resume, self.line = (number, offset), number
                    yield record

    # -- writing ------------------------------------------------------------------------------------------------

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        data = "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs).encode("utf-8")
        if self._failed is not None:  # never write after a failed write: its torn record is the next opener's
            raise JournalWriteError(self.path, self._failed)
        try:
            with self._locked():
                fd = os.open(self.path, os.O_RDWR | os.O_APPEND)
                try:
                    note = self._cut_torn_tail(fd)  # a process died mid-write: never append onto its torn record
                    _write_all(fd, data)
                    os.fsync(fd)
                finally:
                    os.close(fd)
        except OSError as e:
            self._failed = e
            raise JournalWriteError(self.path, e) from e
        self._tell(note)

    def repair(self, *, required: bool = True) -> str | None:
        """Cut a torn last record off (under the lock); returns the one-line note, or None if the file was whole.

        With ``required=False`` (a reader) a file it may not write is left as it is: readers skip a torn record.
        """
        if not _ends_torn(self.path):  # the usual case costs one byte read and no lock
            return None
        try:
            with self._locked():
                fd = os.open(self.path, os.O_RDWR | os.O_APPEND)
                try:
                    note = self._cut_torn_tail(fd)
                finally:
                    os.close(fd)
        except OSError as e:
            if not required and e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                return None
            raise StorageError(f"journal {self.path} ends in an incomplete record that cannot be cut off here: "
                               f"{e.strerror or e}", hint="make the file and its folder writable and run again") from e
        self._tell(note)
        return note

    def _cut_torn_tail(self, fd: int) -> str | None:
        """With the lock held (so no writer is mid-record): save and cut an incomplete last line."""
        size = os.fstat(fd).st_size
        if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
            return None
        cut = _last_line_start(fd, size)
        torn = os.pread(fd, size - cut, cut) if cut is not None else b""
        if cut is None or torn[:len(RECORD_START)] != RECORD_START[:len(torn)]:
            raise JournalCorruptError(self.path, _line_number(fd, cut if cut is not None else size),
                                      "the last line has no newline and is not a journal record")
        kept = _save(self.path, torn)
        os.ftruncate(fd, cut)
        os.fsync(fd)
        return (f"journal {self.path}: cut off an incomplete last record ({len(torn)} bytes at byte {cut}, left by "
                f"a crash or a full disk; never applied); its bytes are in {kept}")

    def _tell(self, note: str | None) -> None:
        if note:
            self.notes.append(note)
            warnings.warn(JournalRepairedWarning(note), stacklevel=3)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            self._lock.acquire()
        except RuntimeError as e:  # Optuna's lock, interrupted while waiting, fails its own release over the cause
            raise (e.__context__ or e) from None
        try:
            yield
        finally:
            try:
                self._lock.release()
            except RuntimeError:
                pass  # another process broke the lock as stale (Optuna's grace period); our write is complete


def _open_to_read(path: Path) -> BinaryIO:
    try:
        return open(path, "rb")
    except OSError as e:
        raise StorageError(f"cannot read journal {path}: {e.strerror or e}") from None


def _parse(line: bytes, path: Path, number: int) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise JournalCorruptError(path, number, f"not JSON ({type(e).__name__})") from None
    if not isinstance(record, dict) or not isinstance(record.get("op_code"), int) \
            or not isinstance(record.get("worker_id"), str):
        raise JournalCorruptError(path, number, "JSON but not an Optuna journal record (op_code, worker_id)")
    return record


def _ends_torn(path: Path) -> bool:
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        return size > 0 and os.pread(f.fileno(), 1, size - 1) != b"\n"


def _last_line_start(fd: int, size: int) -> int | None:
    """Offset just after the last newline (0 if none), reading backwards; None past ``_TAIL_LIMIT``."""
    end = size
    while end > 0 and size - end < _TAIL_LIMIT:
        start = max(0, end - (1 << 16))
        i = os.pread(fd, end - start, start).rfind(b"\n")
        if i >= 0:
            return start + i + 1
        end = start
    return 0 if end == 0 else None


def _line_number(fd: int, offset: int) -> int:
    """The 1-based line at byte ``offset`` (an error path only: it reads the file up to there)."""
    newlines, pos = 0, 0
    while pos < offset:
        chunk = os.pread(fd, min(1 << 20, offset - pos), pos)
        if not chunk:
            break
        newlines, pos = newlines + chunk.count(b"\n"), pos + len(chunk)
    return newlines + 1


def _save(path: Path, data: bytes) -> Path:
    """Write ``data`` to a new ``<path>.torn-<UTC time>`` and make it and its name durable before the cut."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for n in range(1, 1000):
        kept = path.with_name(f"{path.name}{TORN_SUFFIX}{stamp}" + (f"-{n}" if n > 1 else ""))
        try:
            fd = os.open(kept, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(errno.EEXIST, "too many torn-record copies this second", str(kept))
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    _fsync_dir(path.parent)
    return kept


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    """``os.write`` until done: a short write (a file size limit reached) raises on the next call (EFBIG)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


__all__ = ["RECORD_START", "JournalCorruptError", "JournalFile", "JournalRepairedWarning", "JournalWriteError"]
