"""The Optuna glue: create or resume a study, run the objective through a runner, settle what other processes run.

Trial values are median latencies in milliseconds (a weighted sum over shapes for ``mix``). Each trial keeps
its status, median, spread, sample count, raw samples, speedup over the baseline, the configs it ran and the
runner's provenance as user attrs. A failed measurement fails the trial with its status and reason attached.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, Trial, TrialState

from ._optuna_compat import enqueue, storage_of, trial_id
from .claim import claim
from .errors import UsageError
from .heartbeat import (
    ENQUEUED_ATTR,
    OWNER_ATTR,
    fail_dead_trials,
    forget_trial,
    heartbeat_interval_s,
    this_process,
)
from .interrupts import safe_point
from .plan import StudyTarget, config_set_key, study_attrs
from .runners import Runner
from .sampling import KEY_ATTR, make_sampler, recorded_status
from .space import Parameter, SearchSpace
from .stats import round_sig
from .types import Case, Environment, Measurement, freeze_params

DEFAULT_TRIALS = 24
ATTRS_KEY = "mla_tune"
METRIC = "latency_ms"


@dataclass(frozen=True)
class Progress:
    """One step of a study, for progress bars: never printed by the library."""

    study: str
    phase: str  # "trial", "confirm", "done"
    done: int
    total: int | None
    best_ms: float | None = None
    speedup: float | None = None
    message: str = ""


ProgressFn = Callable[[Progress], None]
_log = logging.getLogger(__name__)


class MeasurementFailed(Exception):
    """Raised inside the objective so that Optuna records the trial as failed (status kept in user attrs)."""


def suggest(trial: Trial, p: Parameter) -> Any:
    if p.type == "bool":
        return trial.suggest_categorical(p.name, [False, True])
    if p.choices is not None:
        return trial.suggest_categorical(p.name, list(p.choices))
    return trial.suggest_int(p.name, p.low, p.high, step=p.step, log=p.log)


class Objective:
    """Measures the configs a trial asks for; identical configs are measured once per study."""

    def __init__(self, target: StudyTarget, runner: Runner, env: Environment, study: optuna.Study) -> None:
        self.target, self.runner, self.env, self.study = target, runner, env, study
        self.limit: int | None = None  # distinct measurements allowed; claims keep concurrent workers within it
        self.baseline_key = config_set_key(target.default_configs())
        self._current: int | None = None  # storage id of the trial being run here, until Optuna stores it
        self._bug = False  # the objective raised an unexpected error (Optuna failed the trial for it)
        self.interrupted = False  # Ctrl-C reached the objective
        self._seen: dict[str, FrozenTrial] = {}
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)):
            if recorded_status(t) and KEY_ATTR in t.user_attrs:  # interrupted trials have no status: redo them
                self._seen.setdefault(t.user_attrs[KEY_ATTR], t)

    def baseline_ms(self) -> float | None:
        t = self._seen.get(self.baseline_key)
        return t.value if t is not None and t.state == TrialState.COMPLETE else None

    def __call__(self, trial: Trial) -> float:
        self._current, self._bug = trial_id(trial), False
        try:
            return self._evaluate(trial)
        except (MeasurementFailed, optuna.TrialPruned, optuna.exceptions.UpdateFinishedTrialError):
            raise  # kept as data, out of budget, or failed under us by another worker (see lost_trial)
        except KeyboardInterrupt:
            self.interrupted = True  # Optuna's tell may fail after this and replace it: run_trials re-raises it
            raise
        except Exception:
            self._bug = True
            raise

    def _evaluate(self, trial: Trial) -> float:
        configs = self.target.resolve(lambda p: suggest(trial, p))
        key = config_set_key(configs)
        trial.set_user_attr(KEY_ATTR, key)
        if key == self.baseline_key:
            trial.set_user_attr("role", "baseline")
        earlier = self._seen.get(key)
        if earlier is None:  # other workers may have measured it, or be measuring it: see claim.py
            earlier = claim(self.study, trial, key, self.limit)
        if earlier is not None:  # same kernels as an earlier trial: reuse, don't spend GPU time
            return self._reuse(trial, earlier)
        attrs, value = self._measure(configs)
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        frozen = _Recorded(key, value, attrs, trial.number)
        self._seen[key] = frozen  # type: ignore[assignment]
        if value is None:
            raise MeasurementFailed(attrs["message"])
        base = self.baseline_ms()
        if base is not None:
            trial.set_user_attr("speedup_vs_default", round_sig(base / value, 4))
        return value

    def told(self) -> None:
        """Optuna stored the answer: from here on an error is not about that trial."""
        self._current = None

    def lost_trial(self) -> FrozenTrial | None:
        """This worker's current trial if another worker failed it as stale while it ran here, else None (also
        when the objective itself raised: that is a bug to surface, not a lost trial).

        That happens when this host's heartbeats came late (an overloaded host, a stalled shared file system, a
        skewed clock): Optuna then refuses to store the value. The trial holds no result (see
        ``recorded_status``) and its retry measures the config again, so it is forgotten here too.
        """
        if self._current is None or self._bug:
            return None
        t = storage_of(self.study).get_trial(self._current)
        self._current = None  # answered once: a later error elsewhere must not be taken for this trial again
        if t.state != TrialState.FAIL:
            return None
        key = t.user_attrs.get(KEY_ATTR)
        if getattr(self._seen.get(key), "number", None) == t.number:
            del self._seen[key]
        return t

    def _reuse(self, trial: Trial, earlier: Any) -> float:
        trial.set_user_attr("duplicate_of", getattr(earlier, "number", None))
        for k, v in earlier.user_attrs.items():
            if k not in (KEY_ATTR, "role", "duplicate_of"):
                trial.set_user_attr(k, v)
        if earlier.value is None:
            raise MeasurementFailed(earlier.user_attrs.get("message", "failed before"))
        return earlier.value

    def _measure(self, configs: list[dict]) -> tuple[dict[str, Any], float | None]:
        """Measure every shape; the value is the weighted sum of medians (one shape: its median)."""
        per_shape: dict[str, dict[str, Any]] = {}
        total = 0.0
        for ws, config in zip(self.target.shapes, configs):
            r = self.target.request
            case = Case(r.backend, ws.shape, r.dims, freeze_params(config), r.kv_cache_dtype)
            m = self.runner.measure(case)
            per_shape[ws.spec] = measurement_attrs(m, config)
            if not m.ok:
                attrs = {"status": m.status.value, "message": f"{ws.spec}: {m.message}", "shapes": per_shape,
                         "provenance": self.env.as_dict()}
                return attrs, None
            total += ws.weight * m.median_ms
        attrs: dict[str, Any] = {"status": "ok", "provenance": self.env.as_dict()}
        if len(per_shape) == 1:
            attrs.update(next(iter(per_shape.values())))
        else:
            attrs["shapes"] = per_shape
        return attrs, round_sig(total)


@dataclass
class _Recorded:
    """What the objective remembers of a trial it measured in this process (duck-types FrozenTrial)."""

    key: str
    value: float | None
    user_attrs: dict[str, Any]
    number: int | None = None
    state: TrialState = TrialState.COMPLETE

    def __post_init__(self) -> None:
        if self.value is None:
            self.state = TrialState.FAIL


def measurement_attrs(m: Measurement, config: dict) -> dict[str, Any]:
    attrs: dict[str, Any] = {"status": m.status.value, "config": dict(config)}
    if m.ok:
        attrs.update(median_ms=round_sig(m.median_ms), spread=round_sig(m.spread, 4), n_samples=len(m.samples_ms),
                     samples_ms=[round_sig(x) for x in m.samples_ms])
    else:
        attrs["message"] = m.message
    if m.rel_err is not None:
        attrs["rel_err"] = round_sig(m.rel_err, 3)
    if m.details:
        attrs["details"] = dict(m.details)
    return attrs


def open_study(target: StudyTarget, storage: optuna.storages.BaseStorage, env: Environment,
               sampler: optuna.samplers.BaseSampler) -> optuna.Study:
    """Create the study or load it; refuse to mix trials from a different search space into it."""
    study = optuna.create_study(study_name=target.name, storage=storage, sampler=sampler, direction="minimize",
                                load_if_exists=True)
    attrs = study_attrs(target, env)
    existing = study.user_attrs.get(ATTRS_KEY)
    if existing is None:
        study.set_user_attr(ATTRS_KEY, attrs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([METRIC])
    else:
        _check_same_source(target.name, existing, json.loads(json.dumps(attrs)))
    return study


_SAME_ENV = ("runner", "gpu", "driver", "cuda", "torch", "vllm")


def _check_same_source(name: str, existing: dict, new: dict) -> None:
    """A resumed study must measure the same thing the same way: same space, shapes and software."""
    if existing.get("space") != new["space"]:
        raise UsageError(f"study {name} was made with a different search space",
                         hint="restore the YAML, or use another --storage for the new space")
    if existing.get("shapes") != new["shapes"]:
        raise UsageError(f"study {name} was made with different workload shapes or weights",
                         hint="restore workloads.yaml, or use another --storage")
    old_env, env = existing.get("environment", {}), new["environment"]
    for key in _SAME_ENV:
        if old_env.get(key) != env.get(key):
            raise UsageError(f"study {name} was measured with {key} {_show(old_env.get(key))}; "
                             f"this run has {_show(env.get(key))}", hint="use another --storage for the new setup")


def _show(value: Any) -> str:
    return value.get("name", str(value)) if isinstance(value, dict) else str(value)


def _measured(study: optuna.Study) -> list[FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))
            if recorded_status(t)]


def measured_count(study: optuna.Study) -> int:
    """Distinct configs measured: what the trial budget counts, since a repeated config costs no GPU time."""
    return sum(1 for t in _measured(study) if "duplicate_of" not in t.user_attrs)


def best_ok_trial(study: optuna.Study) -> FrozenTrial | None:
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    return min(done, key=lambda t: t.value) if done else None


def study_limit(target: StudyTarget) -> int:
    """Distinct configs the study needs measured: its trial budget (default 24), at most the whole space; the
    whole space when only a --timeout bounds it."""
    r, n = target.request, len(target.enumerate()[1])
    budget = r.n_trials if r.n_trials is not None else (None if r.timeout_s else DEFAULT_TRIALS)
    return min(budget, n) if budget is not None else n


def deadline_of(target: StudyTarget) -> float | None:
    """When a study's --timeout runs out (``time.monotonic``), from now."""
    return time.monotonic() + target.request.timeout_s if target.request.timeout_s else None


def past(deadline: float | None) -> bool:
    """Has ``deadline`` (``time.monotonic``; None: none) passed?"""
    return deadline is not None and time.monotonic() >= deadline


def run_trials(target: StudyTarget, storage: optuna.storages.BaseStorage, runner: Runner, env: Environment,
               progress: ProgressFn | None = None, deadline: float | None = None) -> optuna.Study:
    """Run (or resume) the trials of one study up to its budget, or until ``deadline`` (no trial starts after it,
    but queued ones still run: nothing is left WAITING). Ctrl-C propagates after the trial is recorded.

    Trials of processes known dead (``heartbeat.fail_dead_trials``) are failed first, so that neither the budget
    nor the sampler counts them: their configs are measured again."""
    r = target.request
    answers, keys = target.enumerate()
    limit = study_limit(target)
    budget = r.n_trials if r.n_trials is not None else (None if r.timeout_s else DEFAULT_TRIALS)
    sampler, _chosen = make_sampler(r.sampler, space_size=len(keys), budget=budget, targets=answers, keys=keys,
                                    seed=r.seed, values={p.name: p.values() for p in target.space.parameters})
    study = open_study(target, storage, env, sampler)
    fail_dead_trials(study)
    if not _baseline_pending_or_done(study, keys[0]) and not past(deadline):
        enqueue(study, answers[0], user_attrs={"role": "baseline"}, system_attrs={ENQUEUED_ATTR: this_process()})
    objective = Objective(target, runner, env, study)
    objective.limit = limit
    max_calls = 4 * limit + 10  # TPE can keep proposing measured configs once the good region is exhausted
    calls = 0

    def on_trial(st: optuna.Study, t: FrozenTrial) -> None:
        nonlocal calls
        calls += 1
        objective.told()
        forget_trial()
        done = measured_count(st)
        if (not _queued(st) and (done >= limit or past(deadline))) or calls >= max_calls \
                or t.state == TrialState.PRUNED:
            st.stop()  # pruned: the budget is filled by trials in flight
        if progress:
            best = best_ok_trial(st)
            base = objective.baseline_ms()
            progress(Progress(target.name, "trial", min(done, limit), limit, best.value if best else None,
                              base / best.value if best and base else None, t.user_attrs.get("message", "")))

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
                why = (f"trial {lost.number} was failed as stale by another worker while it ran here (late "
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


def running_where(running: list[FrozenTrial]) -> str:
    """``trial 7 running in host:pid``, or a count and the processes."""
    where = sorted({process_name(t) for t in running})
    what = f"trial {running[0].number}" if len(running) == 1 else f"{len(running)} trials"
    return f"{what} still running in {', '.join(where)}"


def process_name(t: FrozenTrial) -> str:
    owner = t.system_attrs.get(OWNER_ATTR) or {}
    return f"{owner['host']}:{owner['pid']}" if "host" in owner else "a process that recorded no owner"


def _enqueue_missing(study: optuna.Study, answers: list[dict], keys: list[str], limit: int) -> int:
    """Queue configs no trial measured or runs, as many as ``limit`` still needs (in the space's order)."""
    have = {t.user_attrs.get(KEY_ATTR) for t in study.get_trials(deepcopy=False)
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
        if t.state in (TrialState.WAITING, TrialState.RUNNING) and t.user_attrs.get("role") == "baseline":
            return True
        if recorded_status(t) and t.user_attrs.get(KEY_ATTR) == baseline_key:
            return True
    return False


def check_space_available(space: SearchSpace, runner: Runner) -> tuple[SearchSpace, dict[str, str]]:
    """Drop prefill backends the runner cannot run here (trials spent on them would only fail)."""
    if "prefill_backend" not in space:
        return space, {}
    excluded: dict[str, str] = {}
    allowed = []
    for value in space["prefill_backend"].values():
        if value == "auto":
            allowed.append(value)
            continue
        st = runner.backend_status(str(value), "prefill")
        if st.available:
            allowed.append(value)
        else:
            excluded[str(value)] = st.reason
    return space.restrict("prefill_backend", allowed), excluded
