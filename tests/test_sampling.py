"""Samplers: the exhaustive walk visits each config once; the local order starts next to vLLM's default."""

from __future__ import annotations

import optuna
import pytest

from mla_tune.errors import UnknownNameError
from mla_tune.sampling import ExhaustiveSampler, make_sampler

VALUES = {"x": [1, 2, 4, 8, 16, 32], "g": [False, True]}
TARGETS = [{"x": 32, "g": True}] + [{"x": x, "g": g} for g in (False, True) for x in VALUES["x"]
                                    if (x, g) != (32, True)]
KEYS = [f"{t['x']}-{t['g']}" for t in TARGETS]


def walk(sampler, landscape, n):
    study = optuna.create_study(sampler=sampler)

    def objective(trial):
        x = trial.suggest_categorical("x", VALUES["x"])
        g = trial.suggest_categorical("g", VALUES["g"])
        trial.set_user_attr("key", f"{x}-{g}")
        trial.set_user_attr("status", "ok")
        return landscape(x, g)

    study.enqueue_trial(TARGETS[0])
    study.optimize(objective, n_trials=n)
    return [t.user_attrs["key"] for t in study.trials]


@pytest.mark.parametrize("order", ["random", "local"])
def test_exhaustive_visits_every_config_once_then_stops(order):
    keys = walk(ExhaustiveSampler(TARGETS, KEYS, seed=1, order=order, values=VALUES), lambda x, g: x, 50)
    assert sorted(keys) == sorted(KEYS)


def test_local_order_follows_the_gains_from_the_default():
    # smooth in x with its optimum at x=4 under graphs: the walk should get there in a few steps
    keys = walk(ExhaustiveSampler(TARGETS, KEYS, seed=0, order="local", values=VALUES),
                lambda x, g: abs(x - 4) + (0 if g else 10) + 1, 12)
    assert keys[0] == "32-True"
    assert "4-True" in keys[:5]
    assert set(keys[1:3]) == {"16-True", "32-False"} or keys[1] in {"16-True", "32-False"}


def test_auto_is_local_when_the_space_fits_and_tpe_otherwise():
    assert make_sampler("auto", space_size=12, budget=24, targets=TARGETS, keys=KEYS, seed=0)[1] == "local"
    assert make_sampler("auto", space_size=12, budget=6, targets=TARGETS, keys=KEYS, seed=0)[1] == "tpe"
    assert make_sampler("grid", space_size=12, budget=6, targets=TARGETS, keys=KEYS, seed=0)[1] == "grid"
    with pytest.raises(UnknownNameError, match="random"):
        make_sampler("bohb", space_size=1, budget=1, targets=TARGETS, keys=KEYS, seed=0)


def test_the_spelled_out_twin_of_auto_comes_last_in_the_local_walk():
    """The baseline's ``auto`` ran 8 splits (its details say so): the explicit 8-split config runs the same
    kernels, so the walk measures the real neighbours first and the twin only at the end."""
    values = {"s": ["auto", 1, 2, 4, 8, 16, 32]}
    targets = [{"s": "auto"}] + [{"s": v} for v in values["s"][1:]]
    keys = [str(t["s"]) for t in targets]
    study = optuna.create_study(sampler=ExhaustiveSampler(targets, keys, seed=0, order="local", values=values))

    def objective(trial):
        s = trial.suggest_categorical("s", values["s"])
        trial.set_user_attr("key", str(s))
        trial.set_user_attr("status", "ok")
        if trial.number == 0:
            trial.set_user_attr("role", "baseline")
            trial.set_user_attr("details", {"s": "8"})  # what vLLM's heuristic picked
        return {"auto": 1.0, 8: 1.0}.get(s, 2.0)

    study.enqueue_trial({"s": "auto"})
    study.optimize(objective, n_trials=20)
    order = [t.user_attrs["key"] for t in study.trials]
    assert sorted(order) == sorted(keys) and order[0] == "auto"
    assert order[-1] == "8" and set(order[1:3]) == {"4", "16"}  # neighbours of where auto landed come first
