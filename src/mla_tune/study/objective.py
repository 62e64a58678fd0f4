"""The objective Optuna calls: record the configs a trial asks for against vLLM's default, once per study.

The trial's value is the config's latency relative to vLLM's default, each shape recorded against the default
sample by sample (``measure.measure_set``); the latencies stay in the trial's user attrs for display. A config equal
to one measured before (here or by another worker, see ``claim``) is not measured again: the trial takes the earlier
result. A failed measurement fails the trial with its status and reason (``MeasurementFailed``).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import optuna
from optuna.trial import FrozenTrial, Trial, TrialState

from ..coordination.claim import claim
from ..records import TrialResult
from ..runners import Runner
from ..space import Parameter
from .._optuna_compat import set_user_attrs, storage_of, trial_id
from ..types import Environment
from .measure import measure_set
from .plan import StudyTarget, config_set_key
from .sampling import recorded_status

_log = logging.getLogger("mla_tune.study.trials")


class MeasurementFailed(Exception):
    """Raised inside the objective so that Optuna records the trial as failed (status kept in user attrs)."""


def suggest(trial: Trial, p: Parameter) -> Any:
    if p.type == "bool":
        return trial.suggest_categorical(p.name, [False, True])
    if p.choices is not None:
        return trial.suggest_categorical(p.name, list(p.choices))
    return trial.suggest_int(p.name, p.low, p.high, step=p.step, log=p.log)


def write(trial: Trial, result: TrialResult) -> None:
    """Store ``result`` (or the step of it that is set) in the trial's user attrs (one journal append)."""
    set_user_attrs(trial, result.to_attrs())


class Objective:
    """Measures the configs a trial asks for; identical configs are measured once per study."""

    def __init__(self, target: StudyTarget, runner: Runner, env: Environment, study: optuna.Study) -> None:
        self.target, self.runner, self.env, self.study = target, runner, env, study
        self.limit: int | None = None  # distinct measurements allowed; claims keep concurrent workers within it
        self.baseline_key = config_set_key(target.default_configs())
        self._current: int | None = None  # storage id of the trial being run here, until Optuna stores it
        self._bug = False  # the objective raised an unexpected error (Optuna failed the trial for it)
        self.interrupted = False  # Ctrl-C reached the objective
        self._seen: dict[str, TrialResult] = {}  # config key -> the trial that measured it (number and value set)
        self.gpu_s = 0.0  # device seconds the recordings of this process timed
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)):
            r = TrialResult.from_trial(t)
            if recorded_status(t) and r.key is not None:  # interrupted trials have no status: redo them
                self._seen.setdefault(r.key, r)

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
        write(trial, TrialResult(key=key, role="baseline" if key == self.baseline_key else None))
        earlier = self._seen.get(key)
        if earlier is None:  # other workers may have measured it, or be measuring it: see claim.py
            found = claim(self.study, trial, key, self.limit, self.baseline_key)
            earlier = TrialResult.from_trial(found) if found is not None else None
        if earlier is not None:  # same kernels as an earlier trial: reuse, don't spend GPU time
            return self._reuse(trial, earlier)
        result, value = self._measure(configs)
        write(trial, result)
        self._seen[key] = replace(result, key=key, number=trial.number, value=value)
        if value is None:
            raise MeasurementFailed(result.message)
        return value

    def told(self) -> None:
        """Optuna stored the answer: from here on an error is not about that trial."""
        self._current = None

    def lost_trial(self) -> FrozenTrial | None:
        """This worker's current trial if another worker finished it while it ran here, else None (also when the
        objective itself raised: that is a bug to surface, not a lost trial). Optuna then refuses to store the
        value here.

        FAIL: another worker failed it as stale, because this host's heartbeats came late (an overloaded host, a
        stalled shared file system, a skewed clock). The trial holds no result (see ``recorded_status``) and its
        retry measures the config again, so it is forgotten here too.
        COMPLETE: another worker ran the same trial and stored its result. On SQLite two processes can both take
        one queued trial (Optuna's RDB storage checks WAITING before RUNNING in Python, and SQLite has no row lock),
        so the other's result stands and this measurement is dropped.
        """
        if self._current is None or self._bug:
            return None
        t = storage_of(self.study).get_trial(self._current)
        self._current = None  # answered once: a later error elsewhere must not be taken for this trial again
        if t.state == TrialState.COMPLETE:
            return t
        if t.state != TrialState.FAIL:
            return None
        key = TrialResult.from_trial(t).key
        seen = self._seen.get(key) if key is not None else None
        if seen is not None and seen.number == t.number:
            del self._seen[key]
        return t

    def _reuse(self, trial: Trial, earlier: TrialResult) -> float:
        write(trial, TrialResult(duplicate_of=earlier.number))
        write(trial, replace(earlier, key=None, role=None, duplicate_of=None))  # this trial's own key and role stay
        if earlier.value is None:
            raise MeasurementFailed(earlier.message or "failed before")
        return earlier.value

    def _measure(self, configs: list[dict]) -> tuple[TrialResult, float | None]:
        """Record every shape against vLLM's default; the value is the latency relative to it (``VALUE_KIND``)."""
        got = measure_set(self.runner, self.target, configs)
        self.gpu_s += got.gpu_s
        return got.trial_result(self.env.as_dict())
