"""Claims: with several workers on one study, a config is measured once, the trial budget is not overrun, and a
confirmation is run by one worker (``ConfirmClaim``).

Optuna's samplers do not coordinate across processes: two workers can propose the same config at the same moment
(TPE and random can; the exhaustive sampler in a narrow race), a config finished by another worker is unknown to
this worker's dedupe cache, and each worker checks the budget only after its own trials. So before measuring, a
trial writes a claim (a trial system attr: the config key) and then reads the study. Every storage orders a write
before any later read, so of two trials that claim the same config at least one sees the other's claim; a trial
measures only when it sees no live rival, and steps back (withdraws, waits, tries again) otherwise. The same
write-then-read counts the claims in flight against the budget. No lock, no scheduler: Optuna's storage only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import socket
import threading
import time
from typing import Any

import optuna
from optuna.trial import FrozenTrial, Trial, TrialState

from ..records import TrialResult
from .._optuna_compat import storage_of, study_id, trial_id
from .heartbeat import (
    ENQUEUED_ATTR,
    OWNER_ATTR,
    dead_trial,
    fail_dead_trials,
    grace_period_s,
    heartbeat_interval_s,
    process_gone,
    this_process,
)
from .interrupts import safe_point

CONFIRMING_ATTR = "mla_tune:confirming"  # study system attr: the worker confirming the study now (ConfirmClaim)
# Trial system attr: {"key": the config key this trial measures, "worker": "host:pid:gpu"}; None while it steps
# back. It stays after the trial ends: on a measured trial it says which worker (host, GPU) measured it.
CLAIM_ATTR = "mla_tune:claim"
MAX_BACKOFF_S = 2.0
_log = logging.getLogger(__name__)


class BudgetSpent(optuna.TrialPruned):
    """Measured plus in-flight trials already fill the budget: this trial ends pruned, without a measurement."""



def recorded_status(t: FrozenTrial) -> str | None:
    """The status a finished trial recorded (``ok``, ``failed``, ...), or None where it holds no result to count
    or reuse.

    A trial holds no result if it stopped before measuring (no status), or if its worker died in the short window
    after writing an ``ok`` measurement and before Optuna stored the value: the trial then ends FAIL (by heartbeat
    or on interrupt) with ``status: ok`` but no value. Such a trial is measured again rather than reused as
    "failed", which would drop a config that works.
    """
    status = TrialResult.from_trial(t).status
    if t.state == TrialState.COMPLETE or (t.state == TrialState.FAIL and status != "ok"):
        return status
    return None  # running, queued, pruned (no value), or FAIL after an "ok" write

def claim(study: optuna.Study, trial: Trial, key: str, limit: int | None,
          baseline_key: str | None = None) -> FrozenTrial | None:
    """Returns ``None`` when this trial may measure ``key`` now (the claim stays until the trial ends), or the
    finished trial that measured ``key`` (to reuse). Raises ``BudgetSpent`` when ``limit`` is reached.

    vLLM's default (``baseline_key``) is never out of budget, since nothing can be confirmed without it; until it is
    measured or being measured, one place in the budget is kept for it. (Two workers could otherwise fill a small
    budget with other configs while the queued baseline waited, and leave the study unconfirmable.)"""
    storage = storage_of(study)
    backoff = 0.05
    mine = {"key": key, "worker": worker_id()}  # also replaces the claim a retry inherits from its dead original
    while True:
        storage.set_trial_system_attr(trial_id(trial), CLAIM_ATTR, mine)
        done, rivals, in_flight, measured, baseline_taken = _scan(study, trial.number, key, baseline_key)
        if done is not None:
            return done
        kept = 0 if baseline_key is None or baseline_taken else 1
        if limit is not None and key != baseline_key and measured + in_flight + kept >= limit:
            raise BudgetSpent(f"budget of {limit} filled by measured and in-flight trials")
        if not rivals:
            return None
        storage.set_trial_system_attr(trial_id(trial), CLAIM_ATTR, None)
        fail_dead_trials(study)  # a rival whose worker died must not block us (past the grace period, if remote)
        with safe_point():  # random: two rivals that both stepped back desync
            time.sleep(random.uniform(backoff / 2, backoff))
        backoff = min(2 * backoff, MAX_BACKOFF_S)


def release_studies(store: optuna.storages.BaseStorage, names: list[str]) -> None:
    """This process stops (Ctrl-C, SIGTERM, an error): fail what it left RUNNING or queued in these studies, so
    that nothing waits on it; the next run measures their configs. Best effort: a storage that fails here (the
    database went away) is left to the next run, which fails this process's trials as soon as it sees them."""
    me = this_process()
    try:
        for name in names:
            try:
                study = optuna.load_study(study_name=name, storage=store)
            except KeyError:
                continue  # not created yet
            fail_dead_trials(study, mine=True)
            for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
                if t.system_attrs.get(ENQUEUED_ATTR) == me:
                    with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                        storage_of(study).set_trial_state_values(trial_id(t), state=TrialState.FAIL)
    except Exception:  # the error that stopped this process is the one to report, not this one
        _log.debug("could not release this process's trials", exc_info=True)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{os.environ.get('CUDA_VISIBLE_DEVICES', '')}"


def _scan(study: optuna.Study, number: int, key: str, baseline_key: str | None = None
          ) -> tuple[FrozenTrial | None, int, int, int, bool]:
    """(a finished trial that measured ``key``, live rivals on ``key``, claims in flight, distinct measured, whether
    ``baseline_key`` is measured or being measured by another trial)."""
    done, rivals, in_flight, measured, now = None, 0, 0, 0, time.time()
    baseline_taken = False
    for t in study.get_trials(deepcopy=False):
        if t.number == number or (t.state == TrialState.RUNNING and dead_trial(t, now)):
            continue  # a dead process's claim holds nothing: its trial is failed and its config measured again
        if recorded_status(t):  # finished with a result
            r = TrialResult.from_trial(t)
            measured += r.fresh
            baseline_taken = baseline_taken or r.key == baseline_key
            if r.fresh and r.key == key and (done is None or t.number < done.number):
                done = t
        elif t.state == TrialState.RUNNING and t.system_attrs.get(CLAIM_ATTR):
            in_flight += 1
            rivals += t.system_attrs[CLAIM_ATTR]["key"] == key
            baseline_taken = baseline_taken or t.system_attrs[CLAIM_ATTR]["key"] == baseline_key
    return done, rivals, in_flight, measured, baseline_taken


def running_where(running: list[FrozenTrial]) -> str:
    """``trial 7 still running in host:pid``, or a count and the processes."""
    where = sorted({process_name(t) for t in running})
    what = f"trial {running[0].number}" if len(running) == 1 else f"{len(running)} trials"
    return f"{what} still running in {', '.join(where)}"


def process_name(t: FrozenTrial) -> str:
    owner = t.system_attrs.get(OWNER_ATTR) or {}
    return f"{owner['host']}:{owner['pid']}" if "host" in owner else "a process that recorded no owner"


def measured_by(t: FrozenTrial) -> str | None:
    """``host:pid:gpu`` of the worker that measured ``t`` (None for reused duplicates and unclaimed trials)."""
    c = t.system_attrs.get(CLAIM_ATTR)
    return c["worker"] if c and TrialResult.from_trial(t).fresh else None


class ClaimLost(Exception):
    """Another worker took this confirmation over (it thought this one dead): stop, its result will be stored."""


class ConfirmClaim:
    """Who confirms a study now, for workers sharing it (on one host or many): a study system attr
    ``{"worker": host:pid:gpu, "trials": n, "beat": wall clock, "owner": the process}``, refreshed by a thread
    every heartbeat interval.

    A worker confirms only if no other worker holds a fresh claim on the same or a newer state of the study
    (``trials``: distinct configs measured); a claim not refreshed within the heartbeat grace period (its worker
    died) is taken over, and the worker that lost it stops at its next round. Two workers that claim within the
    same few milliseconds can both go ahead (write, then read back, narrows the window, but a study attr cannot be
    compare-and-set): that costs a duplicate confirmation, never a wrong one.
    """

    def __init__(self, study: optuna.Study, trials: int) -> None:
        self.study, self.trials, self.me = study, trials, worker_id()
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _read(self) -> dict[str, Any] | None:
        return storage_of(self.study).get_study_system_attrs(study_id(self.study)).get(CONFIRMING_ATTR)

    def _write(self, value: dict[str, Any] | None) -> None:
        storage_of(self.study).set_study_system_attr(study_id(self.study), CONFIRMING_ATTR, value)

    def held_elsewhere(self) -> bool:
        c = self._read()
        # abs(): a beat from a host whose clock runs ahead must not look fresh for longer than the grace period.
        # A worker of this host that is gone (killed) holds nothing, beat or not.
        return bool(c) and c["worker"] != self.me and c["trials"] >= self.trials and \
            abs(time.time() - c["beat"]) <= grace_period_s() and not process_gone(c.get("owner"))

    def _mine(self) -> dict[str, Any]:
        return {"worker": self.me, "trials": self.trials, "beat": time.time(), "owner": this_process()}

    def take(self) -> bool:
        if self.held_elsewhere():
            return False
        self._write(self._mine())
        c = self._read()
        if not c or c["worker"] != self.me:
            return False
        self._thread = threading.Thread(target=self._beat, daemon=True, name="mla-tune-confirm-claim")
        self._thread.start()
        return True

    def _beat(self) -> None:
        while not self._stop.wait(heartbeat_interval_s()):
            try:
                c = self._read()
                if c and c["worker"] != self.me:
                    self.lost = True
                    return
                self._write(self._mine())
            except Exception:  # a storage hiccup: the next beat tries again, the grace period covers a few
                continue

    def check(self) -> None:
        """Called between rounds: stop if another worker took the confirmation over."""
        if self.lost:
            raise ClaimLost(f"confirmation of {self.study.study_name} taken over by another worker")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        c = self._read()
        if c and c["worker"] == self.me:
            self._write(None)


__all__ = ["CLAIM_ATTR", "CONFIRMING_ATTR", "BudgetSpent", "ClaimLost", "ConfirmClaim", "claim", "measured_by",
           "process_name", "release_studies", "running_where"]
