"""Samplers: an exhaustive sampler for the conditional MLA spaces, TPE, random, and the ``auto`` choice."""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from ._optuna_compat import storage_of, trial_id
from .errors import UnknownNameError
from .heartbeat import dead_trial, stamp_owner
from .records import KEY_ATTR, TrialResult

SAMPLERS = ("auto", "tpe", "grid", "random")
TARGET_ATTR = "mla_tune:target"


def detail_key(param: str) -> str:
    """Where a measurement's details say what a parameter's ``auto`` resolved to (``prefill`` for the prefill
    backend, the parameter's own name otherwise, e.g. ``num_kv_splits``)."""
    return "prefill" if param == "prefill_backend" else param


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


class ExhaustiveSampler(BaseSampler):
    """Visits every distinct config of a conditional space once, in random or local-search order.

    Optuna's ``GridSampler`` needs a fixed product space; the MLA spaces are conditional (a parameter exists
    only for some values of others), so this sampler walks an explicit list of targets instead: each target is
    the answers to the questions the objective asks, and ``keys[i]`` is what that target runs. A target is
    visited once a trial with its key exists (running ones too, unless their process is known dead: see
    ``heartbeat.dead_trial``), so parallel workers rarely collide; when all are visited the study stops.

    ``order="random"`` (plain grid search) keeps early stops unbiased. ``order="local"`` is a best-first local
    search that still ends up exhaustive: each trial takes the unvisited config nearest to the best one measured
    so far (the baseline at first), so the neighbours of vLLM's default come first and the search then follows
    the gains. MLA landscapes are mostly smooth along each knob (split counts, caps), which is what makes this pay.
    """

    def __init__(self, targets: Sequence[dict[str, Any]], keys: Sequence[str], seed: int | None = None,
                 order: str = "random", values: dict[str, Sequence[Any]] | None = None) -> None:
        if len(targets) != len(keys) or not targets:
            raise ValueError("need one key per target, and at least one target")
        if order not in ("random", "local"):
            raise ValueError(f"unknown order {order!r}")
        self._targets, self._keys = list(targets), list(keys)
        self._index = {k: i for i, k in enumerate(keys)}
        self._order, self._values = order, dict(values or {})
        self._auto_at: dict[str, Any] | None = None  # where "auto" landed, learned from the baseline
        self._rng = random.Random(seed)
        self._fallback = optuna.samplers.RandomSampler(seed=seed)

    def _unvisited(self, study: optuna.Study) -> list[int]:
        visited, now = set(), time.time()
        for t in study.get_trials(deepcopy=False):
            if t.state == TrialState.RUNNING and dead_trial(t, now):
                continue  # its process is gone: it will be failed and its config measured again
            if t.state == TrialState.RUNNING and TARGET_ATTR in t.system_attrs:
                visited.add(self._keys[t.system_attrs[TARGET_ATTR]])
            elif t.state == TrialState.RUNNING or recorded_status(t):
                # An interrupted trial (finished without a status) was never measured: visit it again.
                visited.add(TrialResult.from_trial(t).key)
        return [i for i, k in enumerate(self._keys) if k not in visited]

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if not stamp_owner(study, trial):
            return  # failed under us already: nothing to pick
        if "fixed_params" in trial.system_attrs or trial.params:  # enqueued (the baseline) or a retried trial
            return  # brings its own params (and a retry its original's target attr)
        unvisited = self._unvisited(study)
        if not unvisited:
            pick = self._rng.randrange(len(self._targets))
        elif self._order == "local":
            self._learn_auto(study)
            pick = self._nearest(unvisited, self._incumbent(study))
        else:
            pick = self._rng.choice(unvisited)
        storage_of(study).set_trial_system_attr(trial_id(trial), TARGET_ATTR, pick)

    def _incumbent(self, study: optuna.Study) -> int:
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        done = [r for r in map(TrialResult.from_trial, complete) if r.key in self._index]
        best = min(done, key=lambda r: r.value) if done else None
        return self._index[best.key] if best else 0

    def _learn_auto(self, study: optuna.Study) -> None:
        """Place ``auto`` where the baseline says vLLM's heuristic landed (e.g. 8 splits, fa3).

        The runner reports what ``auto`` resolved to in the baseline's details; walking from there makes the
        first steps the neighbours of what vLLM really ran rather than of the list's first entry.
        """
        if self._auto_at is not None:
            return
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        base = next((r for r in map(TrialResult.from_trial, complete) if r.role == "baseline"), None)
        if base is None:
            return
        details = (base.measurement.details if base.measurement is not None else None) or {}
        self._auto_at = {}
        for name, vals in self._values.items():
            used = details.get(detail_key(name))
            match = [v for v in vals if str(v) == str(used) and v != "auto"]
            if "auto" in vals and match:
                self._auto_at[name] = match[0]

    def _position(self, name: str, value: Any) -> int | None:
        vals = list(self._values.get(name, ()))
        value = (self._auto_at or {}).get(name, value) if value == "auto" else value
        return vals.index(value) if value in vals else None

    def _distance(self, a: dict[str, Any], b: dict[str, Any]) -> tuple[int, int]:
        """(parameters that differ, steps along ordered value lists): one knob at a time, small steps first."""
        differ, steps = 0, 0
        for name in set(a) | set(b):
            if a.get(name) == b.get(name):
                continue
            differ += 1
            pa, pb = self._position(name, a.get(name)), self._position(name, b.get(name))
            if pa is not None and pb is not None:
                steps += abs(pa - pb)
        return differ, steps

    def _twin_of_default(self, target: dict[str, Any]) -> bool:
        """Does ``target`` spell out what the baseline's ``auto`` values resolved to (e.g. 8 splits, fa3)? It runs
        the baseline's kernels, so measuring it early only spends a trial; it still comes, last."""
        base, landed = self._targets[0], self._auto_at or {}
        spelled = [n for n in target if target[n] != base.get(n)]
        return bool(spelled) and all(base.get(n) == "auto" and landed.get(n) == target[n] for n in spelled)

    def _nearest(self, unvisited: list[int], incumbent: int) -> int:
        center, base = self._targets[incumbent], self._targets[0]

        def rank(i: int) -> tuple:
            return (self._twin_of_default(self._targets[i]), self._distance(self._targets[i], center))

        ranked = sorted(unvisited, key=lambda i: (rank(i), self._distance(self._targets[i], base), i))
        best = rank(ranked[0])
        ties = [i for i in ranked if rank(i) == best]
        return ties[self._rng.randrange(len(ties))] if len(ties) > 1 else ranked[0]

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return {}

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        idx = trial.system_attrs.get(TARGET_ATTR)
        if idx is not None and param_name in self._targets[idx]:
            return self._targets[idx][param_name]
        return self._fallback.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        if not self._unvisited(study):
            study.stop()


def make_sampler(name: str, *, space_size: int, budget: int | None, targets: Sequence[dict[str, Any]],
                 keys: Sequence[str], seed: int | None,
                 values: dict[str, Sequence[Any]] | None = None) -> tuple[BaseSampler, str]:
    """The sampler for ``name`` and what was chosen (``auto`` resolves to ``local`` or ``tpe``).

    ``auto``: exhaustive when the whole space fits the trial budget, walked as a local search from vLLM's
    default so that the optimum tends to come early (bench/search_efficiency.py measures this); otherwise TPE
    over the conditional space. ``grid`` is the same exhaustive walk in random order.
    """
    if name not in SAMPLERS:
        raise UnknownNameError("sampler", name, SAMPLERS)
    if name == "auto":
        if budget is not None and space_size > budget:
            return _tpe(seed, budget), "tpe"
        return ExhaustiveSampler(targets, keys, seed, order="local", values=values), "local"
    if name == "grid":
        return ExhaustiveSampler(targets, keys, seed), name
    if name == "random":
        return _StampedRandom(seed=seed), name
    return _tpe(seed, budget), name


# Every sampler records the process running each trial as the trial starts (``heartbeat.stamp_owner``): the
# sampler's ``before_trial`` is the one hook Optuna calls in that moment, before the trial's first heartbeat.
class _StampedRandom(optuna.samplers.RandomSampler):
    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        stamp_owner(study, trial)
        super().before_trial(study, trial)


class _StampedTPE(optuna.samplers.TPESampler):
    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        stamp_owner(study, trial)
        super().before_trial(study, trial)


def _tpe(seed: int | None, budget: int | None) -> BaseSampler:
    import warnings

    startup = 6 if budget is None else max(3, min(10, budget // 4))
    with warnings.catch_warnings():  # multivariate/group/constant_liar are flagged experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return _StampedTPE(seed=seed, n_startup_trials=startup, multivariate=True, group=True, constant_liar=True)


# KEY_ATTR is re-exported: the trial attr samplers and tests look configs up by (``records`` owns the name).
__all__ = ["KEY_ATTR", "SAMPLERS", "TARGET_ATTR", "ExhaustiveSampler", "detail_key", "make_sampler", "recorded_status"]
