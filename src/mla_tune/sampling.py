"""Samplers: an exhaustive sampler for the conditional MLA spaces, TPE, random, and the ``auto`` choice."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from .errors import UnknownNameError

SAMPLERS = ("auto", "tpe", "grid", "random")
TARGET_ATTR = "mla_tune:target"
KEY_ATTR = "key"  # user attr: the configs a trial runs, as canonical JSON (set before measuring)


class ExhaustiveSampler(BaseSampler):
    """Visits every distinct config of a conditional space once, in random order.

    Optuna's ``GridSampler`` needs a fixed product space; the MLA spaces are conditional (a parameter exists
    only for some values of others), so this sampler walks an explicit list of targets instead: each target is
    the answers to the questions the objective asks, and ``keys[i]`` is what that target runs. A target is
    visited once a trial with its key exists (running ones too), so parallel workers rarely collide; when all are
    visited the study stops. Random order keeps early stops (budget, Ctrl-C) unbiased.
    """

    def __init__(self, targets: Sequence[dict[str, Any]], keys: Sequence[str], seed: int | None = None) -> None:
        if len(targets) != len(keys) or not targets:
            raise ValueError("need one key per target, and at least one target")
        self._targets, self._keys = list(targets), list(keys)
        self._rng = random.Random(seed)
        self._fallback = optuna.samplers.RandomSampler(seed=seed)

    def _unvisited(self, study: optuna.Study) -> list[int]:
        visited = set()
        for t in study.get_trials(deepcopy=False):
            if t.state == TrialState.RUNNING and TARGET_ATTR in t.system_attrs:
                visited.add(self._keys[t.system_attrs[TARGET_ATTR]])
            elif t.state == TrialState.RUNNING or (t.state.is_finished() and "status" in t.user_attrs):
                # An interrupted trial (finished without a status) was never measured: visit it again.
                visited.add(t.user_attrs.get(KEY_ATTR))
        return [i for i, k in enumerate(self._keys) if k not in visited]

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if "fixed_params" in trial.system_attrs:  # an enqueued trial (the baseline) brings its own params
            return
        unvisited = self._unvisited(study)
        pick = self._rng.choice(unvisited) if unvisited else self._rng.randrange(len(self._targets))
        study._storage.set_trial_system_attr(trial._trial_id, TARGET_ATTR, pick)

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
                 keys: Sequence[str], seed: int | None) -> tuple[BaseSampler, str]:
    """The sampler for ``name`` and the name of what was chosen (``auto`` resolves to ``grid`` or ``tpe``).

    ``auto``: exhaustive when the whole space fits the trial budget (nothing to gain from a model),
    otherwise TPE over the conditional space.
    """
    if name not in SAMPLERS:
        raise UnknownNameError("sampler", name, SAMPLERS)
    if name == "auto":
        name = "grid" if budget is None or space_size <= budget else "tpe"
    if name == "grid":
        return ExhaustiveSampler(targets, keys, seed), name
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed), name
    return _tpe(seed, budget), name


def _tpe(seed: int | None, budget: int | None) -> BaseSampler:
    import warnings

    startup = 6 if budget is None else max(3, min(10, budget // 4))
    with warnings.catch_warnings():  # multivariate/group/constant_liar are flagged experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, multivariate=True, group=True,
                                          constant_liar=True)
