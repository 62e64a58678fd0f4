"""Claims: with several workers on one study, a config is measured once and the trial budget is not overrun.

Optuna's samplers do not coordinate across processes: two workers can propose the same config at the same moment
(TPE and random can; the exhaustive sampler in a narrow race), a config finished by another worker is unknown to
this worker's dedupe cache, and each worker checks the budget only after its own trials. So before measuring, a
trial writes a claim (a trial system attr: the config key) and then reads the study. Every storage orders a write
before any later read, so of two trials that claim the same config at least one sees the other's claim; a trial
measures only when it sees no live rival, and steps back (withdraws, waits, tries again) otherwise. The same
write-then-read counts the claims in flight against the budget. No lock, no scheduler: Optuna's storage only.
"""

from __future__ import annotations

import os
import random
import socket
import time
import warnings

import optuna
from optuna.trial import FrozenTrial, Trial, TrialState

from .heartbeat import has_heartbeat
from .interrupts import safe_point
from .sampling import KEY_ATTR, recorded_status

# Trial system attr: {"key": the config key this trial measures, "worker": "host:pid:gpu"}; None while it steps
# back. It stays after the trial ends: on a measured trial it says which worker (host, GPU) measured it.
CLAIM_ATTR = "mla_tune:claim"
MAX_BACKOFF_S = 2.0


class BudgetSpent(optuna.TrialPruned):
    """Measured plus in-flight trials already fill the budget: this trial ends pruned, without a measurement."""


def claim(study: optuna.Study, trial: Trial, key: str, limit: int | None) -> FrozenTrial | None:
    """Returns ``None`` when this trial may measure ``key`` now (the claim stays until the trial ends), or the
    finished trial that measured ``key`` (to reuse). Raises ``BudgetSpent`` when ``limit`` is reached."""
    storage = study._storage
    backoff = 0.05
    mine = {"key": key, "worker": worker_id()}  # also replaces the claim a retry inherits from its dead original
    while True:
        storage.set_trial_system_attr(trial._trial_id, CLAIM_ATTR, mine)
        done, rivals, in_flight, measured = _scan(study, trial.number, key)
        if done is not None:
            return done
        if limit is not None and measured + in_flight >= limit:
            raise BudgetSpent(f"budget of {limit} filled by measured and in-flight trials")
        if not rivals:
            return None
        storage.set_trial_system_attr(trial._trial_id, CLAIM_ATTR, None)
        if has_heartbeat(storage):  # a rival whose worker died must not block us past the grace period
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
        with safe_point():  # random: two rivals that both stepped back desync
            time.sleep(random.uniform(backoff / 2, backoff))
        backoff = min(2 * backoff, MAX_BACKOFF_S)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{os.environ.get('CUDA_VISIBLE_DEVICES', '')}"


def _scan(study: optuna.Study, number: int, key: str) -> tuple[FrozenTrial | None, int, int, int]:
    """(a finished trial that measured ``key``, live rivals on ``key``, claims in flight, distinct measured)."""
    done, rivals, in_flight, measured = None, 0, 0, 0
    for t in study.get_trials(deepcopy=False):
        if t.number == number:
            continue
        if t.state.is_finished() and recorded_status(t):
            fresh = "duplicate_of" not in t.user_attrs
            measured += fresh
            if fresh and t.user_attrs.get(KEY_ATTR) == key and (done is None or t.number < done.number):
                done = t
        elif t.state == TrialState.RUNNING and t.system_attrs.get(CLAIM_ATTR):
            in_flight += 1
            rivals += t.system_attrs[CLAIM_ATTR]["key"] == key
    return done, rivals, in_flight, measured


def measured_by(t: FrozenTrial) -> str | None:
    """``host:pid:gpu`` of the worker that measured ``t`` (None for reused duplicates and unclaimed trials)."""
    c = t.system_attrs.get(CLAIM_ATTR)
    return c["worker"] if c and "duplicate_of" not in t.user_attrs else None


__all__ = ["claim", "measured_by", "BudgetSpent", "CLAIM_ATTR"]
