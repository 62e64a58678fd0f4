"""Heartbeats for journal-file storages, so a dead worker's trial is failed and retried as on PostgreSQL.

Optuna's crash recovery (a thread beats while a trial runs; ``optimize`` fails trials that stopped beating
before each new trial and hands them to ``RetryHeartbeatStaleTrialCallback``) exists only for storages that
implement ``BaseHeartbeat``, and in Optuna <= 5.0 only ``RDBStorage`` does (optuna/optuna#6615 asks for the
journal). This subclass implements that one interface on top of the journal's own API, the beat being a trial
system attr, so Optuna's heartbeat thread, ``fail_stale_trials`` and retry callback do all the rest unchanged.

Heartbeats need a grace period to tell a dead worker from a slow one. On the worker's own machine no waiting is
needed: each trial records the process running it (``OWNER_ATTR``: host, boot, pid namespace, pid and the pid's
start time, so a reused pid is not taken for the worker), and ``fail_dead_trials`` fails a trial whose process is
gone at once; trials of other machines keep the heartbeat rule.
"""

from __future__ import annotations

import copy
import datetime as _dt
import functools
import os
import socket
import time
import uuid
import warnings
from collections.abc import Callable
from typing import Any

import optuna
from optuna.storages import JournalStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from .._optuna_compat import HeartbeatStorage, has_heartbeat, storage_of, study_id, trial_id

HEARTBEAT_ENV = "MLA_TUNE_HEARTBEAT_S"  # seconds between beats (default 10); tests make it short
DEFAULT_INTERVAL_S = 10.0
GRACE_FACTOR = 3  # a trial is stale after 3 missed beats: 30 s by default
BEAT_ATTR = "mla_tune:heartbeat"  # trial system attr: the worker's wall clock (epoch s) at its last beat
OWNER_ATTR = "mla_tune:owner"  # trial system attr: the process running the trial (see ``this_process``)
ENQUEUED_ATTR = "mla_tune:enqueued_by"  # trial system attr: the process that queued a WAITING trial
MAX_RETRY = 1


def heartbeat_interval_s() -> float:
    """The beat interval from ``$MLA_TUNE_HEARTBEAT_S`` (finite seconds, bounded: see ``env``), else 10 s; a bad
    value is one EnvError line (``inf`` used to turn crash recovery off silently)."""
    from .. import env

    return env.heartbeat_s()


def grace_period_s() -> float:
    return GRACE_FACTOR * heartbeat_interval_s()


# User attrs a retry keeps. Optuna's callback copies them all, but a dead trial's result attrs ("status",
# "duplicate_of", medians, ...) belong to a run that never finished: a retry carrying them would look measured
# (or reused) before it ran. The role keeps a retried baseline recognisable as the baseline.
RETRY_KEEPS = ("role",)


def retry_callback() -> Callable[[optuna.Study, FrozenTrial], None]:
    """A dead worker's trial is re-enqueued once (Optuna's own callback): a config that kills twice is dropped."""
    return _Retry()


class _Retry:
    """``retry_callback``'s callback: a class, not a closure, so that the storage holding it can be pickled (part
    of Optuna's storage contract, checked by its ``StorageTestCase.test_pickle_storage``)."""

    def __init__(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self._inner = RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        clean = copy.deepcopy(trial)
        clean.user_attrs = {k: v for k, v in trial.user_attrs.items() if k in RETRY_KEEPS}
        # The dead owner must not follow the retry: popped by a live worker, it would look dead until re-stamped.
        clean.system_attrs = {k: v for k, v in trial.system_attrs.items() if k != OWNER_ATTR}
        clean.system_attrs[ENQUEUED_ATTR] = this_process()
        self._inner(study, clean)


class HeartbeatJournalStorage(JournalStorage, HeartbeatStorage):
    """A ``JournalStorage`` with Optuna's heartbeat interface; the journal file itself is unchanged.

    Beats use the workers' wall clocks: hosts sharing a journal file must keep their clocks in sync (NTP) to
    well within the grace period.
    """

    def __init__(self, backend: optuna.storages.journal.BaseJournalBackend, *, interval_s: float,
                 grace_s: float, callback: Callable[[optuna.Study, FrozenTrial], None] | None) -> None:
        super().__init__(backend)
        self._interval_s, self._grace_s, self._callback = interval_s, grace_s, callback

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            self.set_trial_system_attr(trial_id, BEAT_ATTR, time.time())
        except (optuna.exceptions.UpdateFinishedTrialError, KeyError):
            pass  # failed as stale by another worker meanwhile: nothing left to keep alive

    def stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        stale = []
        for t in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            if now - _last_sign_of_life(t) > self._grace_s or process_gone(t.system_attrs.get(OWNER_ATTR)):
                stale.append(trial_id(t))
        return stale

    def get_heartbeat_interval(self) -> float:  # type: ignore[override]  # Event.wait takes seconds as float
        return self._interval_s

    def get_heartbeat_stale_trial_callback(self) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        return self._callback


def _last_sign_of_life(t: FrozenTrial) -> float:
    """The later of the last beat and the start: a retried trial inherits its dead original's old beat, and a
    worker killed before its first beat still has a start time."""
    start = t.datetime_start.astimezone(_dt.timezone.utc).timestamp() if t.datetime_start else 0.0
    return max(float(t.system_attrs.get(BEAT_ATTR, 0.0)), start)


# -- Which process runs a trial, and whether it still does --------------------------------------------------------

_here: dict[str, Any] = {"trial": None}  # the token of the trial this process runs now (one at a time)


@functools.cache
def _machine(pid: int) -> dict[str, Any]:
    """This host, boot and pid namespace (two containers of one host may share a hostname and a pid), per pid so
    a forked child does not inherit its parent's entry."""
    stat = _proc_stat(pid)
    return {"host": socket.gethostname(), "boot": (_read("/proc/sys/kernel/random/boot_id") or "").strip(),
            "pidns": _pidns(), "pid": pid, "start": stat[1] if stat else None}


def this_process() -> dict[str, Any]:
    """This process as a trial records it: ``{host, boot, pidns, pid, start}`` (Linux: boot id, pid namespace and
    the pid's start time in clock ticks, /proc/PID/stat field 22; elsewhere those are empty and a pid alone counts)."""
    return dict(_machine(os.getpid()))


def stamp_owner(study: optuna.Study, trial: FrozenTrial) -> bool:
    """Record this process as the one running ``trial`` (called as the trial starts here). False when another
    worker failed the trial already (this process stalled past the grace period since the trial was created):
    the objective then meets the finished trial and ``objective.Objective.lost_trial`` handles it."""
    token = uuid.uuid4().hex[:12]
    _here["trial"] = token
    try:
        storage_of(study).set_trial_system_attr(trial_id(trial), OWNER_ATTR, this_process() | {"trial": token})
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    return True


def forget_trial() -> None:
    """No trial runs here any more: a RUNNING trial stamped by this process is now a leftover (a failed tell)."""
    _here["trial"] = None


def process_gone(owner: dict[str, Any] | None) -> bool:
    """Is ``owner`` (a trial's ``OWNER_ATTR``) a process of this machine that no longer runs the trial? False for
    other machines (their trials keep the heartbeat rule) and whenever it cannot be told for sure."""
    if not isinstance(owner, dict) or not isinstance(owner.get("pid"), int):
        return False
    me = _machine(os.getpid())
    if any(owner.get(k) != me[k] for k in ("host", "boot", "pidns")):
        return False
    pid = owner["pid"]
    if pid == os.getpid():  # this process: of its trials only the current one is alive
        return "trial" in owner and owner["trial"] != _here["trial"]
    stat = _proc_stat(pid)
    if stat is None:
        return not _pid_exists(pid)
    state, start = stat
    return state in ("Z", "X") or (owner.get("start") is not None and start != owner["start"])


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks) from /proc/PID/stat, None without /proc or without that pid."""
    text = _read(f"/proc/{pid}/stat")
    if text is None:
        return None
    fields = text[text.rindex(")") + 2:].split()  # the command name (field 2) may hold spaces and parens
    return fields[0], int(fields[19])  # fields 3 and 22


def _pid_exists(pid: int) -> bool:
    if os.path.isdir("/proc/self"):
        return False  # /proc is there and has no entry for the pid
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by another user
    return True


def _pidns() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


OWNERLESS_S = 10.0  # a trial records its owner milliseconds after it is created: one without, this old, is dead


def dead_trial(t: FrozenTrial, now: float) -> bool:
    """Is this RUNNING trial dead, without waiting for its heartbeat to go stale? Its process is gone, or it never
    recorded one (killed between its creation and its first write, or left by an mla-tune that did not record
    owners) and gave no sign of life for 10 s (the grace period, if shorter). Optuna's RDB heartbeats never fail
    such a trial: it has no heartbeat row."""
    owner = t.system_attrs.get(OWNER_ATTR)
    if owner is not None:
        return process_gone(owner)
    return now - _last_sign_of_life(t) > min(OWNERLESS_S, grace_period_s())


def fail_dead_trials(study: optuna.Study, *, mine: bool = False) -> list[FrozenTrial]:
    """Fail now the RUNNING trials known dead (``dead_trial``) and retry them as Optuna retries stale ones, then
    apply Optuna's heartbeat rule to the rest. With ``mine`` this process's own trials are failed too (it is
    stopping; they are not retried: the next run measures what they did not). Returns the trials failed here."""
    storage, now, me = storage_of(study), time.time(), this_process()
    dead, failed = [], []
    for t in storage.get_all_trials(study_id(study), deepcopy=False, states=(TrialState.RUNNING,)):
        owner = t.system_attrs.get(OWNER_ATTR) or {}
        is_dead = dead_trial(t, now)
        if is_dead or (mine and all(owner.get(k) == v for k, v in me.items())):
            try:
                if storage.set_trial_state_values(trial_id(t), state=TrialState.FAIL):
                    failed.append(t)
                    if is_dead:
                        dead.append(t)
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # finished meanwhile, or failed by another worker
    callback = storage.get_heartbeat_stale_trial_callback() if has_heartbeat(storage) else None
    if callback is not None:
        for t in dead:
            callback(study, copy.deepcopy(storage.get_trial(trial_id(t))))
    if has_heartbeat(storage):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
    return failed


__all__ = ["BEAT_ATTR", "ENQUEUED_ATTR", "HEARTBEAT_ENV", "OWNER_ATTR", "HeartbeatJournalStorage", "dead_trial",
           "fail_dead_trials", "forget_trial", "grace_period_s", "has_heartbeat", "heartbeat_interval_s", "process_gone",
           "retry_callback", "stamp_owner", "this_process"]
