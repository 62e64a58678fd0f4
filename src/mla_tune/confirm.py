"""Paired confirmation: re-measure the best configs against vLLM's default, interleaved, so drift cannot fake a gain.

Trials are measured minutes apart; clocks, temperature and neighbours drift in between, and a 2% "gain"
between two trials can be drift. Here each candidate and the default are measured back to back for several
rounds (A B, then B A, so that neither always goes first) and the speedup is the geometric mean of the
per-round ratios with an interval at the Bonferroni level over the candidates (``verdict.judge``). Only an
interval entirely above 1 counts as a gain.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import TrialState

from ._optuna_compat import storage_of, study_id
from .claim import CONFIRMING_ATTR, ClaimLost, ConfirmClaim
from .plan import StudyTarget, config_set_key
from .runners import Runner
from .stats import median, round_sig
from .verdict import judge
from .study import ATTRS_KEY, Progress, ProgressFn, measured_count
from .types import Case, Environment, freeze_params

CONFIRM_KEY = "confirmation"


def candidates(study: optuna.Study, baseline_key: str, top: int) -> list[optuna.trial.FrozenTrial]:
    """The ``top`` fastest distinct configs other than the baseline."""
    best: dict[str, optuna.trial.FrozenTrial] = {}
    for t in sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.value):
        key = t.user_attrs.get("key")
        if key and key != baseline_key and key not in best:
            best[key] = t
    return list(best.values())[:top]


def _configs(t: optuna.trial.FrozenTrial, target: StudyTarget) -> list[dict]:
    if "shapes" in t.user_attrs:
        return [t.user_attrs["shapes"][s.spec]["config"] for s in target.shapes]
    return [t.user_attrs["config"]]


def _measure_set(runner: Runner, target: StudyTarget, configs: list[dict]) -> tuple[float | None, str, list]:
    """Weighted latency of one round, the failure reason if any, and the per-shape samples."""
    r = target.request
    total, samples = 0.0, []
    for ws, config in zip(target.shapes, configs):
        m = runner.measure(Case(r.backend, ws.shape, r.dims, freeze_params(config), r.kv_cache_dtype))
        if not m.ok:
            return None, f"{ws.spec}: {m.status.value}: {m.message}", samples
        total += ws.weight * m.median_ms
        samples.append(list(m.samples_ms))
    return total, "", samples


def confirm(study: optuna.Study, target: StudyTarget, runner: Runner, env: Environment,
            progress: ProgressFn | None = None, *, force: bool = False, shared: bool = False
            ) -> dict[str, Any] | None:
    """Confirm the best configs of a finished study; stores and returns the result (study attr ``confirmation``).

    Skipped (the stored result returned) when no trial finished since the last confirmation, unless ``force``.
    ``shared``: other workers (other hosts too) may confirm the same study; the first to claim it does the work and
    the others get None (see ``ConfirmClaim``), so no GPU time goes into the same confirmation twice.
    """
    n_done = measured_count(study)  # distinct measurements: a late reused duplicate changes no candidate
    stored = study.user_attrs.get(CONFIRM_KEY)
    if stored and stored.get("trials") == n_done and not force:
        return stored
    held = ConfirmClaim(study, n_done) if shared else None
    if held is not None and not held.take():
        return None
    try:
        return _confirm(study, target, runner, env, n_done, progress, held)
    except ClaimLost:
        return None
    finally:
        if held is not None:
            held.release()


def _confirm(study: optuna.Study, target: StudyTarget, runner: Runner, env: Environment, n_done: int,
             progress: ProgressFn | None, held: ConfirmClaim | None) -> dict[str, Any]:
    r = target.request
    default_configs = target.default_configs()
    picks = candidates(study, config_set_key(default_configs), r.confirm_top)
    results = []
    for i, t in enumerate(picks):
        if progress:
            progress(Progress(target.name, "confirm", i, len(picks), message=f"trial {t.number}"))
        results.append(_confirm_one(runner, target, default_configs, t, r.confirm_rounds,
                                    held.check if held is not None else None))
    results, winner = judge(results)
    result = {
        "trials": n_done,
        "rounds": r.confirm_rounds,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "runner": env.runner,
        "default": {"configs": default_configs},
        "candidates": results,
        "winner": winner,
    }
    if held is not None:  # shared: never replace a confirmation of a newer state of the study
        newer = storage_of(study).get_study_user_attrs(study_id(study)).get(CONFIRM_KEY)
        if newer and newer.get("trials", -1) > n_done:
            return newer
    study.set_user_attr(CONFIRM_KEY, result)
    if progress:
        progress(Progress(target.name, "done", len(picks), len(picks)))
    return result


def _confirm_one(runner: Runner, target: StudyTarget, default_configs: list[dict],
                 t: optuna.trial.FrozenTrial, rounds: int, check: Callable[[], None] | None = None
                 ) -> dict[str, Any]:
    cand_configs = _configs(t, target)
    a_ms, b_ms, a_samples, b_samples = [], [], 0, 0
    for i in range(rounds):
        if check is not None:
            check()
        order = ((default_configs, a_ms), (cand_configs, b_ms))
        for configs, sink in (order if i % 2 == 0 else order[::-1]):
            value, why, samples = _measure_set(runner, target, configs)
            if value is None:
                return {"trial": t.number, "configs": cand_configs, "status": "failed", "message": why}
            sink.append(value)
            if sink is a_ms:
                a_samples += sum(len(s) for s in samples)
            else:
                b_samples += sum(len(s) for s in samples)
    return {
        "trial": t.number, "configs": cand_configs, "status": "ok",
        "default_ms": round_sig(median(a_ms)), "best_ms": round_sig(median(b_ms)),
        "samples": {"default": a_samples, "best": b_samples},
        "round_ms": {"default": [round_sig(x) for x in a_ms], "best": [round_sig(x) for x in b_ms]},
    }


__all__ = ["confirm", "candidates", "CONFIRM_KEY", "CONFIRMING_ATTR", "ATTRS_KEY"]
