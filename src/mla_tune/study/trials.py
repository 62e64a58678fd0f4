"""The Optuna glue: create or resume a study, run the objective through a runner, settle what other processes run.

Trial values are latencies relative to vLLM's default, recorded against it in the same recording (``measure``: a
traffic-weighted mean over the shapes for ``mix``; 1.0 is the default, lower is faster). Each trial stores a
``records.TrialResult``: its status, median, spread, sample count, raw samples, its pair with the default (the
default's median, the speedup and its interval over the recording's blocks), the configs it ran and the runner's
provenance. A failed measurement fails the trial with its status and reason.
"""

from __future__ import annotations

import json
import logging
import time
import warnings

import optuna
from optuna.trial import FrozenTrial, TrialState

from ..coordination.claim import process_name, running_where
from ..coordination.heartbeat import (
    ENQUEUED_ATTR,
    fail_dead_trials,
    forget_trial,
    heartbeat_interval_s,
    this_process,
)
from ..coordination.interrupts import safe_point
from ..records import ATTRS_KEY, TrialResult
from ..runners import Runner
from .._optuna_compat import enqueue, storage_of, trial_id
from .counts import best_ok_trial, measured_count
from ..types import Environment
from . import priors
from .budget import DEFAULT_TRIALS, deadline_of, past, study_budget, study_limit
from .plan import StudyTarget, config_set_key, study_attrs
from .progress import Progress, ProgressFn
from .sampling import make_sampler, recorded_status, warm_start
from .setup import check_same_source, check_space_available

_log = logging.getLogger(__name__)

from .measure import VALUE_KIND
from .objective import MeasurementFailed, Objective

METRIC = VALUE_KIND


def open_study(target: StudyTarget, storage: optuna.storages.BaseStorage, env: Environment,
               sampler: optuna.samplers.BaseSampler) -> optuna.Study:
    """Create the study or load it; refuse to mix trials from a different search space into it."""
    try:  # loading first: create_study(load_if_exists) appends a record to a journal on every resume
        study = optuna.load_study(study_name=target.name, storage=storage, sampler=sampler)
    except KeyError:
        study = optuna.create_study(study_name=target.name, storage=storage, sampler=sampler,
                                    direction="minimize", load_if_exists=True)
    attrs = study_attrs(target, env)
    existing = study.user_attrs.get(ATTRS_KEY)
    if existing is None:
        study.set_user_attr(ATTRS_KEY, attrs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([METRIC])
    else:
        check_same_source(target.name, existing, json.loads(json.dumps(attrs)))
    return study


def trial_ms(t: FrozenTrial, target: StudyTarget) -> float | None:
    """A trial's latency for display: its config's median (one shape), or for a mix the traffic-weighted sum of its
    shapes' latencies on the scale of the default each was recorded with."""
    r = TrialResult.from_trial(t)
    if r.measurement is not None and r.measurement.median_ms is not None:
        return r.measurement.median_ms
    shapes = r.shapes or {}
    if not all(shapes.get(ws.spec) and shapes[ws.spec].paired for ws in target.shapes):
        return None
    return sum(ws.weight * shapes[ws.spec].paired.reference_ms / shapes[ws.spec].paired.speedup  # type: ignore
               for ws in target.shapes)


def run_trials(target: StudyTarget, storage: optuna.storages.BaseStorage, runner: Runner, env: Environment,
               progress: ProgressFn | None = None, deadline: float | None = None) -> optuna.Study:
    """Run (or resume) the trials of one study up to its budget, or until ``deadline`` (no trial starts after it,
    but queued ones still run: nothing is left WAITING). Ctrl-C propagates after the trial is recorded.

    Trials of processes known dead (``heartbeat.fail_dead_trials``) are failed first, so that neither the budget
    nor the sampler counts them: their configs are measured again."""
    r = target.request
    answers, keys = target.enumerate()
    limit = study_limit(target)
    defaults = target.default_configs()
    late = [priors.late(target.resolve(lambda p, a=a: a[p.name]), defaults) for a in answers]
    sampler, _chosen = make_sampler(r.sampler, space_size=len(keys), budget=study_budget(target), targets=answers,
                                    keys=keys, seed=r.seed, late=late,
                                    values={p.name: p.values() for p in target.space.parameters})
    study = open_study(target, storage, env, sampler)
    fail_dead_trials(study)
    if not past(deadline):
        new = not study.get_trials(deepcopy=False)
        if new:  # a new study: its neighbours' optima first (see warm_start)
            _enqueue_warm_start(study, target, env, keys[0])
        if not _baseline_pending_or_done(study, keys[0]):
            enqueue(study, answers[0], user_attrs=TrialResult(role="baseline").to_attrs(),
                    system_attrs={ENQUEUED_ATTR: this_process()})
        _enqueue_openings(study, target, limit)  # --backend auto: every other backend's defaults next
    objective = Objective(target, runner, env, study)
    objective.limit = limit
    max_calls = 4 * limit + 10  # TPE can keep proposing measured configs once the good region is exhausted
    calls = 0

    counted = _MeasuredCount()

    def on_trial(st: optuna.Study, t: FrozenTrial) -> None:
        nonlocal calls
        calls += 1
        objective.told()
        forget_trial()
        done = counted(st)
        if (not _queued(st) and (done >= limit or past(deadline))) or calls >= max_calls \
                or t.state == TrialState.PRUNED:
            st.stop()  # pruned: the budget is filled by trials in flight
        if progress:
            best = best_ok_trial(st)
            progress(Progress(target.name, "trial", min(done, limit), limit, trial_ms(best, target) if best else None,
                              1 / best.value if best and best.value else None, TrialResult.from_trial(t).message or ""))

    if progress:
        progress(Progress(target.name, "trial", min(measured_count(study), limit), limit))
    def drive() -> None:
        # Queued trials run even once the budget is met or the time is up: a dead worker's retry, enqueued when its
        # heartbeat went stale, must not be left WAITING in the storage. It costs nothing when its config was
        # measured meanwhile (reused).
        nonlocal calls
        while _queued(study) or (measured_count(study) < limit and calls < max_calls and not past(deadline)):
            try:
                study.optimize(objective, n_trials=None, catch=(MeasurementFailed,), callbacks=[on_trial],
                               gc_after_trial=False)
                if not _queued(study):
                    break
            except Exception as e:  # Optuna refuses to tell a trial failed under us (ValueError, or its own assert)
                if objective.interrupted:
                    raise KeyboardInterrupt from e  # Ctrl-C first: the refused tell came after it
                # the refusal is a ValueError or Optuna's own assert on journal storages, UpdateFinishedTrialError on RDB
                refused = (ValueError, AssertionError, optuna.exceptions.UpdateFinishedTrialError)
                lost = objective.lost_trial() if isinstance(e, refused) else None
                if lost is None:
                    raise
                calls += 1
                why = (f"trial {lost.number} was also run and stored by another process (two took one queued "
                       "trial); its result stands" if lost.state == TrialState.COMPLETE else
                       f"trial {lost.number} was failed as stale by another worker while it ran here (late "
                       "heartbeats: an overloaded host or a skewed clock?); its retry measures it again")
                _log.warning("%s: %s", target.name, why)
                if progress:
                    progress(Progress(target.name, "trial", min(measured_count(study), limit), limit, message=why))

    try:
        drive()
        # TPE and random sampling can keep proposing measured configs (a budget near the size of the space): the
        # configs the budget still needs are then queued directly, rather than the study ending short.
        if calls >= max_calls and not past(deadline) and _enqueue_missing(study, answers, keys, limit):
            drive()
    finally:
        forget_trial()  # a trial Optuna could not finish here is a leftover from now on, failed by the next check
    if past(deadline) and progress:
        done = measured_count(study)
        progress(Progress(target.name, "trial", min(done, limit), limit,
                          message=f"--timeout {r.timeout_s:g} s: stopped after {done} of {limit} configs"))
    return study


def settle(target: StudyTarget, store: optuna.storages.BaseStorage, runner: Runner, env: Environment,
           progress: ProgressFn | None = None, deadline: float | None = None) -> optuna.Study:
    """Wait until no other process runs a trial of this study, then run what is left; repeat until nothing is.

    Trials of dead processes are failed on the way (at once when they ran on this machine, after the heartbeat
    grace period elsewhere) and retried. Past ``deadline`` nothing is waited for (``require_complete`` then says
    what is missing)."""
    poll_s = min(1.0, heartbeat_interval_s() / 2)
    while True:
        study = optuna.load_study(study_name=target.name, storage=store)
        said = False
        while True:
            fail_dead_trials(study)
            running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if not running or past(deadline):
                break
            if progress and not said:
                progress(Progress(target.name, "trial", measured_count(study), study_limit(target),
                                  message=f"waiting for {running_where(running)}"))
                said = True
            with safe_point():
                time.sleep(poll_s)
        before = measured_count(study)
        if not _queued(study) and (before >= study_limit(target) or past(deadline)):
            return study
        study = run_trials(target, store, runner, env, progress, deadline)
        if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)) \
                and measured_count(study) == before:
            return study  # nothing ran and nothing runs: nothing new can be proposed


class _MeasuredCount:
    """``summary.measured_count`` for a study asked after every trial: finished trials are read once (they never
    change), so a trial costs one parse, not one per trial so far."""

    def __init__(self) -> None:
        self._fresh: dict[int, bool] = {}

    def __call__(self, study: optuna.Study) -> int:
        n = 0
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)):
            tid = trial_id(t)
            if tid not in self._fresh:
                self._fresh[tid] = bool(recorded_status(t)) and TrialResult.from_trial(t).fresh
            n += self._fresh[tid]
        return n


def _enqueue_warm_start(study: optuna.Study, target: StudyTarget, env: Environment, baseline_key: str) -> None:
    """Queue the optima of the nearest finished studies of this GPU, backend and model (``sampling.warm_start``)
    ahead of vLLM's default: where neighbouring shapes share an optimum it is this study's first trial."""
    attrs = json.loads(json.dumps(study_attrs(target, env)))  # as stored, to compare with the stored ones
    for params in warm_start(storage_of(study), target.name, attrs):
        answers = {p.name: params[p.name] if p.contains(params.get(p.name)) else p.default
                   for p in target.space.parameters}
        if config_set_key(target.resolve(lambda p, a=answers: a[p.name])) != baseline_key:
            enqueue(study, answers, user_attrs={}, system_attrs={ENQUEUED_ATTR: this_process()})


def _enqueue_openings(study: optuna.Study, target: StudyTarget, limit: int) -> None:
    """``--backend auto``: queue each other backend's defaults that no trial measured, runs or waits for, within the
    budget. Also on resume: an opening queued by a run that stopped (Ctrl-C, a GPU that could not start) was failed
    unmeasured, and without it the local walk would spend the budget on vLLM's own backend."""
    openings = getattr(target.space, "openings", None)
    if openings is None:
        return
    have: set[str] = set()
    for t in study.get_trials(deepcopy=False):
        r = TrialResult.from_trial(t)
        if recorded_status(t) and r.key is not None:
            have.add(r.key)
        elif t.state in (TrialState.WAITING, TrialState.RUNNING):
            fixed = t.system_attrs.get("fixed_params") or t.params
            if r.key is not None:
                have.add(r.key)
            elif fixed:
                have.add(config_set_key(target.resolve(lambda p, f=fixed: f.get(p.name, p.default))))
    room = max(0, limit - measured_count(study) - 1)  # the baseline comes first
    for a in openings():
        if room and config_set_key(target.resolve(lambda p, a=a: a[p.name])) not in have:
            enqueue(study, a, user_attrs={}, system_attrs={ENQUEUED_ATTR: this_process()})
            room -= 1


def _enqueue_missing(study: optuna.Study, answers: list[dict], keys: list[str], limit: int) -> int:
    """Queue configs no trial measured or runs, as many as ``limit`` still needs (in the space's order)."""
    have = {TrialResult.from_trial(t).key for t in study.get_trials(deepcopy=False)
            if recorded_status(t) or t.state == TrialState.RUNNING}
    missing = [a for a, k in zip(answers, keys) if k not in have][:max(0, limit - measured_count(study))]
    for a in missing:
        enqueue(study, a, user_attrs={}, system_attrs={ENQUEUED_ATTR: this_process()})
    return len(missing)


def _queued(study: optuna.Study) -> bool:
    return bool(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def _baseline_pending_or_done(study: optuna.Study, baseline_key: str) -> bool:
    """Is vLLM's default measured, queued or being measured? (An interrupted baseline must be queued again.)"""
    for t in study.get_trials(deepcopy=False):
        r = TrialResult.from_trial(t)
        if t.state in (TrialState.WAITING, TrialState.RUNNING) and r.role == "baseline":
            return True
        if recorded_status(t) and r.key == baseline_key:
            return True
    return False


# Re-exported where callers of the study package have found them: progress values, the budget, set-up and trial
# queries.
__all__ = ["ATTRS_KEY", "DEFAULT_TRIALS", "METRIC", "MeasurementFailed", "Objective", "Progress", "ProgressFn",
           "best_ok_trial", "check_space_available", "deadline_of", "measured_count", "open_study", "past",
           "process_name", "run_trials", "running_where", "settle", "study_limit"]
