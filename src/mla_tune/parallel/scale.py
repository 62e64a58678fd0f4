"""The multi-GPU launcher: one worker process per GPU on one shared study storage; Ctrl-C stops them all cleanly.

The work is spread by Optuna's own distributed model, not by a scheduler here: every worker runs the workload's
studies against the same storage (see ``workers``), and several hosts cooperate by running the same command with
the same ``--storage``. The launcher only checks, locks, starts, forwards signals and collects.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import MlaTuneError, UsageError
from ..runners import factory_path
from ..storage.urls import StorageSpec, open_storage, parse_storage
from ..study.trials import Progress
from ..study.setup import build_requests, open_runner, preflight
from ..types import Environment
from ..coordination.gpu_lock import GpuLock, acquire_all
from .workers import WorkerJob

STOP_TIMEOUT_S = 60.0  # after Ctrl-C: time for workers to record their current trial before SIGKILL


class WorkersFailedError(MlaTuneError):
    """Some workers stopped with an error or were killed; what the others finished is kept."""

    def __init__(self, message: str, exit_code: int, some_finished: bool = True) -> None:
        hint = "finished trials are kept; run the same command to finish the rest" if some_finished else None
        super().__init__(message, hint=hint)
        self.exit_code = exit_code


@dataclass(frozen=True)
class WorkerReport:
    gpu: str
    pid: int
    exit_code: int  # negative: killed by that signal
    error: str | None  # one line, or None when it finished


@dataclass(frozen=True)
class Launched:
    environment: Environment | None  # of the first worker that finished (None if none did)
    studies: list[str]
    excluded: dict[str, str]
    workers: list[WorkerReport]

    @property
    def failed(self) -> list[WorkerReport]:
        return [w for w in self.workers if w.error is not None]


def check_storage(spec: StorageSpec, n_workers: int) -> None:
    """Several workers need a storage that is safe for concurrent writers; Optuna's SQLite is not."""
    if n_workers > 1 and not spec.concurrent_safe:
        raise UsageError(f"{n_workers} workers cannot share {spec.display}: SQLite fails under concurrent writers",
                         hint="use a journal file (the default: results/studies.journal) or --storage "
                              "postgresql://USER:PASS@HOST/DB")


def _check_runner(runner: str, requests: list[Any]) -> None:
    """Refuse a runner that cannot work before storage is written. A replay is checked in full (cheap); the
    GPU runner only for what needs no GPU (torch, vLLM, CUDA visible): its workers check the backend."""
    with open_runner(runner) as r:
        if r.name != "vllm":
            for request, space in requests:
                preflight(r, request, space)


def launch(study: dict[str, Any], *, gpus: list[str], storage: str | None, runner: str,
           progress: Callable[[Any], None] | None = None) -> Launched:
    """Start a worker per GPU on ``study`` (``api.run_study`` keywords: several backends, workloads and TPs run by
    every worker through its one runner), wait for all, report each.

    ``KeyboardInterrupt`` (Ctrl-C, or SIGTERM here) is forwarded to the workers as SIGINT, which record or fail
    their current trial and exit; it is re-raised once they are gone.
    """
    requests = build_requests(**study)  # bad names and numbers: refused before anything is locked or written
    factory = factory_path(runner)  # a registered runner the workers cannot import: refused here, not in each one
    _check_runner(runner, requests)
    spec = parse_storage(storage)
    check_storage(spec, len(gpus))
    locks = acquire_all(gpus)
    try:
        open_storage(spec, create=True)  # create the file or schema once, before workers race to do it
        remove_stale_jobs()
        with tempfile.TemporaryDirectory(prefix="mla-tune-workers-") as tmp:
            procs = [_start(i, len(gpus), lock, study, spec, runner, factory, Path(tmp), progress)
                     for i, lock in enumerate(locks)]
            with _sigterm_as_interrupt():
                _wait(procs)
            return _collect(procs)
    finally:
        for lock in locks:
            lock.release()


@dataclass
class _Proc:
    lock: GpuLock
    popen: subprocess.Popen
    result: Path
    reader: threading.Thread


def _start(index: int, n: int, lock: GpuLock, study: dict[str, Any], spec: StorageSpec, runner: str, factory: str,
           tmp: Path, progress: Callable[[Any], None] | None) -> _Proc:
    result = tmp / f"worker{index}.result.json"
    job = WorkerJob(index, n, lock.gpu, spec.target if spec.kind == "rdb" else f"journal:{spec.target}", runner,
                    study, str(result), factory, list(sys.path))
    env = dict(os.environ, CUDA_VISIBLE_DEVICES=lock.device, PYTHONUNBUFFERED="1")
    # Own session: a terminal's Ctrl-C reaches the launcher only, which forwards it once (see _wait).
    popen = subprocess.Popen([sys.executable, "-m", "mla_tune.parallel.workers"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, pass_fds=(lock.fd,),
                             start_new_session=True)
    lock.note_holder(popen.pid)
    _hand_over(popen, job)
    reader = threading.Thread(target=_read_progress, args=(popen, progress), daemon=True)
    reader.start()
    return _Proc(lock, popen, result, reader)


def _hand_over(popen: subprocess.Popen, job: WorkerJob) -> None:
    """The job goes down the worker's stdin as one JSON line, never into a file: it holds the storage URL, and a
    database password in it would outlive a launcher killed before it could clean up. The pipe stays open after
    it (the worker stops when it closes: the launcher is gone)."""
    assert popen.stdin is not None
    try:
        popen.stdin.write(json.dumps(dataclasses.asdict(job)).encode() + b"\n")
        popen.stdin.flush()
    except BrokenPipeError:
        pass  # the worker died before reading it: reported as a failed worker by _collect


STALE_JOB_S = 60.0


def remove_stale_jobs(directory: Path | None = None) -> list[Path]:
    """Remove job files that launchers before this version left in ``mla-tune-workers-*`` temp folders when they
    were killed: each holds the storage URL, password included. This launcher writes none; those left by an older
    one are removed at the next run's start (this user's regular files only, untouched for ``STALE_JOB_S``)."""
    removed = []
    now = time.time()
    for path in Path(directory or tempfile.gettempdir()).glob("mla-tune-workers-*/worker*.job.json"):
        try:
            st = path.lstat()
            if stat.S_ISREG(st.st_mode) and st.st_uid == os.getuid() and now - st.st_mtime > STALE_JOB_S:
                path.unlink()
                removed.append(path)
        except OSError:
            continue  # another user's folder, or gone meanwhile
    return removed


_progress_lock = threading.Lock()


def _read_progress(popen: subprocess.Popen, progress: Callable[[Any], None] | None) -> None:
    assert popen.stdout is not None
    for line in popen.stdout:
        if progress is None:
            continue
        try:
            p = Progress(**json.loads(line)["progress"])
        except (ValueError, KeyError, TypeError):
            continue
        with _progress_lock:
            progress(p)


def _wait(procs: list[_Proc]) -> None:
    try:
        while any(p.popen.poll() is None for p in procs):
            time.sleep(0.1)
    except KeyboardInterrupt:
        _stop(procs)
        raise


def _stop(procs: list[_Proc]) -> None:
    """SIGINT to every worker, then wait; SIGKILL after ``STOP_TIMEOUT_S`` or a second Ctrl-C."""
    for p in procs:
        if p.popen.poll() is None:
            p.popen.send_signal(signal.SIGINT)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    try:
        while any(p.popen.poll() is None for p in procs) and time.monotonic() < deadline:
            time.sleep(0.05)
    except KeyboardInterrupt:
        pass
    for p in procs:
        if p.popen.poll() is None:
            p.popen.kill()
            p.popen.wait()


class _sigterm_as_interrupt:
    """SIGTERM (a scheduler or systemd stopping us) stops the workers like Ctrl-C does."""

    def __enter__(self) -> None:
        self._old = None
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGTERM, _raise_interrupt)

    def __exit__(self, *exc: Any) -> None:
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _collect(procs: list[_Proc]) -> Launched:
    reports, env, studies, excluded = [], None, [], {}
    for p in procs:
        p.reader.join(timeout=5)
        rc = p.popen.returncode
        data = json.loads(p.result.read_text()) if p.result.is_file() else {}
        if data.get("ok"):
            env = env or Environment.from_dict(data["environment"])
            studies += [s for s in data["studies"] if s not in studies]
            excluded.update(data["excluded"])
            error = None
        elif data:
            error = data["error"]
        else:
            error = f"killed by {signal.Signals(-rc).name}" if rc < 0 else f"exited with status {rc}"
        reports.append(WorkerReport(p.lock.gpu, p.popen.pid, rc, error))
    return Launched(env, studies, excluded, reports)


def raise_for_failures(launched: Any) -> None:  # a Launched or an api.ParallelOutcome
    """One line naming each failed worker; the exit code of the first (SIGKILL & co: 1)."""
    failed = launched.failed
    if not failed:
        return
    what = "; ".join(f"GPU {w.gpu} (pid {w.pid}): {w.error}" for w in failed)
    head = f"{len(failed)} of {len(launched.workers)} workers failed" if len(launched.workers) > 1 else "worker failed"
    raise WorkersFailedError(f"{head}: {what}", failed[0].exit_code if failed[0].exit_code > 0 else 1,
                             some_finished=len(failed) < len(launched.workers))


__all__ = ["launch", "Launched", "WorkerReport", "WorkersFailedError", "check_storage", "raise_for_failures",
           "remove_stale_jobs"]
