"""Samplers: the exhaustive walk visits each config once; the local order starts next to vLLM's default."""

from __future__ import annotations

import optuna
import pytest

from mla_tune.errors import UnknownNameError
from mla_tune.study.sampling import LOCAL_MAX, ExhaustiveSampler, make_sampler

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
    # one knob changed at a time: a step along x (the far end, 1, counts as one step) or graphs off
    assert keys[1] in {"16-True", "1-True", "32-False"}


def test_the_far_end_of_an_ordered_knob_is_one_step_from_the_default():
    """MLA optima sit at the ends of the split lists as often as next to vLLM's default (one split at large
    batches): from a cap of 32 the walk tries 1 before it has stepped through 16, 8, 4, 2."""
    values = {"x": [1, 2, 4, 8, 16, 32, 64]}
    targets = [{"x": 32}] + [{"x": x} for x in values["x"] if x != 32]
    keys = [str(t["x"]) for t in targets]
    firsts = set()
    for seed in range(6):
        study = optuna.create_study(sampler=ExhaustiveSampler(targets, keys, seed=seed, order="local",
                                                              values=values))

        def objective(trial):
            x = trial.suggest_categorical("x", values["x"])
            trial.set_user_attr("key", str(x))
            trial.set_user_attr("status", "ok")
            return 1.0 if x == 32 else 2.0  # nothing beats the default: the walk stays around it

        study.enqueue_trial({"x": 32})
        study.optimize(objective, n_trials=4)
        order = [t.user_attrs["key"] for t in study.trials]
        assert set(order[1:4]) == {"1", "16", "64"}
        firsts.add(order[1])
    assert firsts == {"1", "16", "64"}  # ties are broken at random


def test_auto_walks_locally_up_to_the_budget_and_tpe_only_for_huge_spaces():
    assert make_sampler("auto", space_size=12, budget=24, targets=TARGETS, keys=KEYS, seed=0)[1] == "local"
    assert make_sampler("auto", space_size=12, budget=6, targets=TARGETS, keys=KEYS, seed=0)[1] == "local"
    assert make_sampler("auto", space_size=LOCAL_MAX + 1, budget=24, targets=TARGETS, keys=KEYS,
                        seed=0)[1] == "tpe"
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
    # neighbours of where auto landed come first (and the ends of the list, one step from anywhere)
    assert order[-1] == "8" and set(order[1:5]) == {"1", "4", "16", "32"}


def test_eager_variants_come_late_and_spelled_out_autos_last():
    """A pure decode shape under a graph: configs that turn the graph off run the same kernels launched one by one,
    and ``fa3`` where the baseline's ``auto`` ran FA3 runs the very kernels of the ``auto`` config. Every other
    config (split caps, FA2, which turns off FA3's scheduler) comes first."""
    caps = [1, 8, 32]
    values = {"prefill_backend": ["auto", "fa2", "fa3"], "cuda_graphs": [False, True], "max_num_splits": caps}
    targets = [{"prefill_backend": "auto", "cuda_graphs": True, "max_num_splits": 32}]
    targets += [{"prefill_backend": p, "cuda_graphs": g, "max_num_splits": c} for p in ("auto", "fa2", "fa3")
                for g in (False, True) for c in caps if (p, g, c) != ("auto", True, 32)]
    keys = [f"{t['prefill_backend']}-{t['cuda_graphs']}-{t['max_num_splits']}" for t in targets]
    late = [not t["cuda_graphs"] for t in targets]
    sampler = ExhaustiveSampler(targets, keys, seed=0, order="local", values=values, late=late)
    study = optuna.create_study(sampler=sampler)

    def objective(trial):
        p = trial.suggest_categorical("prefill_backend", values["prefill_backend"])
        g = trial.suggest_categorical("cuda_graphs", values["cuda_graphs"])
        c = trial.suggest_categorical("max_num_splits", caps)
        trial.set_user_attr("key", f"{p}-{g}-{c}")
        trial.set_user_attr("status", "ok")
        if trial.number == 0:
            trial.set_user_attr("role", "baseline")
            trial.set_user_attr("details", {"prefill": "fa3"})  # vLLM's auto ran FA3
        return 1.0 + (0.5 if not g else 0) + 0.01 * c + (0.2 if p == "fa2" else 0)

    study.enqueue_trial(targets[0])
    study.optimize(objective, n_trials=len(targets) + 5)
    order = [t.user_attrs["key"] for t in study.trials]
    assert sorted(order) == sorted(keys)
    kinds = ["twin" if k.startswith("fa3") else "late" if "-False-" in k else "normal" for k in order]
    assert kinds == sorted(kinds, key=["normal", "late", "twin"].index)
    assert kinds.count("normal") == 6 and kinds.count("twin") == 6


def test_the_pick_is_stored_only_while_another_trial_of_the_study_runs():
    """A storage write per trial buys nothing alone: other workers are what the stored pick is for."""
    from mla_tune.study.sampling import TARGET_ATTR

    def objective(trial):
        x = trial.suggest_categorical("x", VALUES["x"])
        g = trial.suggest_categorical("g", VALUES["g"])
        trial.set_user_attr("key", f"{x}-{g}")
        trial.set_user_attr("status", "ok")
        return float(x)

    alone = optuna.create_study(sampler=ExhaustiveSampler(TARGETS, KEYS, seed=0, order="local", values=VALUES))
    alone.optimize(objective, n_trials=3)
    assert [TARGET_ATTR in t.system_attrs for t in alone.trials] == [False] * 3
    assert len({t.user_attrs["key"] for t in alone.trials}) == 3  # the picks still steer the params

    shared = optuna.create_study(sampler=ExhaustiveSampler(TARGETS, KEYS, seed=0, order="local", values=VALUES))
    other = shared.ask()  # another worker's trial, running
    shared.optimize(objective, n_trials=2)
    mine = [t for t in shared.trials if t.number != other.number]
    assert all(TARGET_ATTR in t.system_attrs for t in mine)
