"""Samplers: an exhaustive sampler for the conditional MLA spaces, TPE, random, the ``auto`` choice, and the warm
start of a new study from its finished neighbours."""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from ..coordination.heartbeat import dead_trial, stamp_owner
from ..errors import UnknownNameError
from ..records import ATTRS_KEY, KEY_ATTR, TrialResult
from .._optuna_compat import storage_of, trial_id
from ..coordination.claim import recorded_status  # noqa: F401 - where the study package reads it
from . import priors

SAMPLERS = ("auto", "tpe", "grid", "random")
LOCAL_MAX = 256  # the auto sampler walks spaces up to this size locally, cut short by the budget, TPE beyond
WARM_N = 2  # nearest finished studies asked for their optimum
WARM_MIN_GAIN = 1.01  # a neighbour's best must beat its default by this much to be tried first here
TARGET_ATTR = "mla_tune:target"


def detail_key(param: str) -> str:
    """Where a measurement's details say what a parameter's ``auto`` resolved to (``prefill`` for the prefill
    backend, the parameter's own name otherwise, e.g. ``num_kv_splits``). A ``--backend auto`` parameter is named
    after its backend (``TRITON_MLA.num_kv_splits``): the measurement reports it by its own name."""
    param = param.rpartition(".")[2]
    return "prefill" if param == "prefill_backend" else param


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
    What cannot win comes last: configs flagged ``late`` (``priors.late``: eager where vLLM replays a graph), then
    twins, configs that spell out what another config's ``auto`` ran (``fa3`` where ``auto`` resolved to FA3), which
    run the same kernels. Enqueued trials (vLLM's default, a warm start) run before any of this.
    """

    def __init__(self, targets: Sequence[dict[str, Any]], keys: Sequence[str], seed: int | None = None,
                 order: str = "random", values: dict[str, Sequence[Any]] | None = None,
                 late: Sequence[bool] | None = None) -> None:
        if len(targets) != len(keys) or not targets:
            raise ValueError("need one key per target, and at least one target")
        if order not in ("random", "local"):
            raise ValueError(f"unknown order {order!r}")
        if late is not None and len(late) != len(targets):
            raise ValueError("need one late flag per target")
        self._targets, self._keys = list(targets), list(keys)
        self._index = {k: i for i, k in enumerate(keys)}
        self._order, self._values = order, dict(values or {})
        self._late = list(late) if late is not None else [False] * len(targets)  # ``priors.late``: long shots
        self._auto_at: dict[str, Any] | None = None  # where "auto" landed, learned from the baseline
        self._twins: set[int] = set()  # targets that spell out what another target's "auto" ran
        self._picks: dict[int, int] = {}  # trial id -> the target picked for it here
        self._finished: dict[int, TrialResult | None] = {}  # trial id -> a finished trial's result (``_result``)
        self._rng = random.Random(seed)
        self._fallback = optuna.samplers.RandomSampler(seed=seed)

    def _result(self, t: FrozenTrial) -> TrialResult | None:
        """A finished trial's result, read once (finished trials never change), or None where it holds none to
        count or reuse (``recorded_status``)."""
        tid = trial_id(t)
        if tid not in self._finished:
            self._finished[tid] = TrialResult.from_trial(t) if recorded_status(t) else None
        return self._finished[tid]

    def _unvisited(self, study: optuna.Study) -> list[int]:
        visited, now = set(), time.time()
        for t in study.get_trials(deepcopy=False):
            if t.state.is_finished():
                r = self._result(t)  # an interrupted trial (finished without a status) was never measured: again
                if r is not None:
                    visited.add(r.key)
            elif t.state == TrialState.RUNNING and not dead_trial(t, now):  # a dead one's config is measured again
                pick = t.system_attrs.get(TARGET_ATTR, self._picks.get(trial_id(t)))
                visited.add(self._keys[pick] if pick is not None else TrialResult.from_trial(t).key)
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
        self._picks[trial_id(trial)] = pick
        # Other workers see the pick before the trial writes its key only if it is stored: a storage write per
        # trial, worth it only while another trial of this study runs (concurrent workers). Alone, this process
        # writes the key a few milliseconds later, and claims settle a collision in that window.
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if any(trial_id(t) != trial_id(trial) for t in running):
            storage_of(study).set_trial_system_attr(trial_id(trial), TARGET_ATTR, pick)

    def _incumbent(self, study: optuna.Study) -> int:
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        done = [r for r in map(self._result, complete) if r is not None and r.key in self._index]
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
        base = next((r for r in map(self._result, complete) if r is not None and r.role == "baseline"), None)
        if base is None:
            return
        details = (base.measurement.details if base.measurement is not None else None) or {}
        self._auto_at = {}
        for name, vals in self._values.items():
            used = details.get(detail_key(name))
            match = [v for v in vals if str(v) == str(used) and v != "auto"]
            if "auto" in vals and match:
                self._auto_at[name] = match[0]
        self._twins = {i for i, t in enumerate(self._targets) if self._spells_out_auto(t)}

    def _spells_out_auto(self, target: dict[str, Any]) -> bool:
        """Is ``target`` another target with some ``auto`` values replaced by what they resolved to?"""
        landed = self._auto_at or {}
        spelled = [n for n, v in target.items() if n in landed and landed[n] == v]
        for n in spelled:
            if {**target, n: "auto"} in self._targets:
                return True
        return False

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
                steps += 1 if pa in self._ends(name) else abs(pa - pb)
        return differ, steps

    def _ends(self, name: str) -> tuple[int, ...]:
        """The two ends of an ordered (integer) value list: one step from anywhere, since MLA optima sit at the ends
        as often as next to the default (one split at large batches, many at long contexts)."""
        vals = [v for v in self._values.get(name, ()) if v != "auto"]
        if len(vals) < 4 or not all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
            return ()
        full = list(self._values[name])
        return (full.index(vals[0]), full.index(vals[-1]))

    def _nearest(self, unvisited: list[int], incumbent: int) -> int:
        center, base = self._targets[incumbent], self._targets[0]

        def rank(i: int) -> tuple:
            return (i in self._twins, self._late[i], self._distance(self._targets[i], center))

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
        idx = trial.system_attrs.get(TARGET_ATTR, self._picks.get(trial_id(trial)))
        if idx is not None and param_name in self._targets[idx]:
            return self._targets[idx][param_name]
        return self._fallback.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        if not self._unvisited(study):
            study.stop()


def make_sampler(name: str, *, space_size: int, budget: int | None, targets: Sequence[dict[str, Any]],
                 keys: Sequence[str], seed: int | None, values: dict[str, Sequence[Any]] | None = None,
                 late: Sequence[bool] | None = None) -> tuple[BaseSampler, str]:
    """The sampler for ``name`` and what was chosen (``auto`` resolves to ``local`` or ``tpe``).

    ``auto``: the local search from vLLM's default (and any warm start queued ahead of it), so that the optimum
    tends to come early (bench/search_efficiency.py measures this); exhaustive when the whole space fits the trial
    budget, cut short by the budget otherwise: with a budget of 10 it found every gain of 3% or more in the H100 and
    H200 sweeps, where TPE, warm-started alike, missed 16 of 71. Spaces of more than ``LOCAL_MAX`` configs get TPE.
    ``grid`` is the exhaustive walk in random order.
    """
    if name not in SAMPLERS:
        raise UnknownNameError("sampler", name, SAMPLERS)
    if name == "auto":
        if budget is not None and space_size > max(budget, LOCAL_MAX):
            return _tpe(seed, budget), "tpe"
        return ExhaustiveSampler(targets, keys, seed, order="local", values=values, late=late), "local"
    if name == "grid":
        return ExhaustiveSampler(targets, keys, seed), name
    if name == "random":
        return _StampedRandom(seed=seed), name
    return _tpe(seed, budget), name


def warm_start(storage: optuna.storages.BaseStorage, name: str, attrs: dict[str, Any], n: int = WARM_N,
               min_gain: float = WARM_MIN_GAIN) -> list[dict[str, Any]]:
    """The params of the best trials of the ``n`` nearest finished studies to study ``name`` (``plan.study_attrs``
    ``attrs``) in ``storage``: neighbouring shapes' optima, the first guesses of a new study (``priors``).

    Finished: nothing of it runs or waits (an unfinished or unmeasured neighbour is passed over). A neighbour whose
    best beat its vLLM default by less than ``min_gain`` says "the default", which every study measures anyway."""
    stored = [(s.study_name, s.user_attrs.get(ATTRS_KEY) or {}) for s in storage.get_all_studies()]
    out: list[dict[str, Any]] = []
    asked = 0
    for _, other in priors.neighbours(name, attrs, stored):
        if asked >= n:
            break
        trials = storage.get_all_trials(storage.get_study_id_from_name(other), deepcopy=False)
        done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
        if not done or any(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials):
            continue
        asked += 1
        best = min(done, key=lambda t: t.value)
        base = next((t.value for t in done if TrialResult.from_trial(t).role == "baseline"), None)
        if (base is None or base >= min_gain * best.value) and best.params not in out:
            out.append(best.params)
    return out


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
__all__ = ["KEY_ATTR", "SAMPLERS", "TARGET_ATTR", "ExhaustiveSampler", "detail_key", "make_sampler", "recorded_status",
           "warm_start"]
