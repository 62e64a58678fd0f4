"""Paired confirmation: re-measure the best configs against vLLM's default, interleaved, so drift cannot fake a gain.

Trials are measured minutes apart; clocks, temperature and neighbours drift in between, and a 2% "gain"
between two trials can be drift. Here each candidate and the default are measured back to back for several
rounds (A B, then B A, so that neither always goes first) and the speedup is the geometric mean of the
per-round ratios with an interval at the Bonferroni level over the candidates (``verdict.judge``). Only an
interval entirely above 1 counts as a gain.

The study loops confirm a study only once every config it needs is measured (``require_complete``): a confirmation,
and so a table, never speaks for a study that a crash, a dead worker or one still running left short.
"""

from __future__ import annotations

import datetime as _dt
import time
from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import TrialState

from ._optuna_compat import storage_of, study_id
from .claim import CONFIRMING_ATTR, ClaimLost, ConfirmClaim
from .errors import MlaTuneError
from .heartbeat import heartbeat_interval_s
from .interrupts import safe_point
from .plan import StudyTarget, config_set_key
from .runners import Runner
from .sampling import KEY_ATTR, recorded_status
from .stats import median, round_sig
from .study import ATTRS_KEY, Progress, ProgressFn, measured_count, past, running_where, study_limit
from .types import Case, Environment, freeze_params
from .verdict import judge

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


class StudyIncompleteError(MlaTuneError):
    """A study that cannot be confirmed or exported yet: a config it needs is not measured (what, and why)."""

    def __init__(self, message: str, *, hint: str = "finished trials are kept; run the same command to measure "
                                                      "the rest") -> None:
        super().__init__(message, hint=hint)


def require_complete(study: optuna.Study, target: StudyTarget, deadline: float | None = None) -> None:
    """Refuse (``StudyIncompleteError``) a study with a config it needs unmeasured: a trial still running or
    queued, vLLM's default not measured, or fewer configs than its budget (unless its --timeout ran out)."""
    limit, done, r = study_limit(target), measured_count(study), target.request
    timed_out = f" when --timeout {r.timeout_s:g} s ran out" if past(deadline) else ""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    head = f"{target.name}: {done} of {limit} configs measured"
    hint = {"hint": "finished trials are kept; run the same command with a longer --timeout to measure the rest"} \
        if timed_out else {}
    # Once every config the study needs is measured, a trial another live worker just started (its sampler finding
    # nothing left, a late duplicate) cannot change what is confirmed; should it measure something new, that makes
    # the confirmation stale and it is confirmed again.
    if running and done < limit:
        raise StudyIncompleteError(f"{head}; {running_where(running)}{timed_out}: not confirmed", **hint)
    if waiting:
        raise StudyIncompleteError(f"{head}; {len(waiting)} queued trial(s) not run{timed_out}: not confirmed",
                                   **hint)
    if not any(recorded_status(t) and t.user_attrs.get(KEY_ATTR) == config_set_key(target.default_configs())
               for t in study.get_trials(deepcopy=False)):
        why = f"--timeout {r.timeout_s:g} s ran out before measuring" if timed_out else "nothing measured"
        raise StudyIncompleteError(f"{head}; {why} vLLM's default, so nothing can be confirmed", **hint)
    if done < limit and not timed_out:
        raise StudyIncompleteError(f"{head}; the {r.sampler} sampler proposed no other config: not confirmed")


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


def await_confirmation(target: StudyTarget, store: optuna.storages.BaseStorage, runner: Runner, env: Environment,
                       progress: ProgressFn | None = None) -> dict[str, Any]:
    """Wait until another process's confirmation of this study is stored; confirm it here if that process died."""
    poll_s = min(1.0, heartbeat_interval_s() / 2)
    while True:
        study = optuna.load_study(study_name=target.name, storage=store)
        result = confirm(study, target, runner, env, progress, shared=True)
        if result is not None:  # stored, or done here
            return result
        with safe_point():
            time.sleep(poll_s)


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


__all__ = ["ATTRS_KEY", "CONFIRMING_ATTR", "CONFIRM_KEY", "StudyIncompleteError", "await_confirmation", "candidates",
           "confirm", "require_complete"]
