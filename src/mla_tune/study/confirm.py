"""Paired confirmation: re-measure the best configs against vLLM's default in rounds of one recording each.

Each trial already compared its config with the default in one recording; confirmation measures the best
candidates again, together, round after round (``rounds``: every round one recording per shape of the default, the
default built again, and every candidate, sample by sample), and the judge (``verdict``) takes the geometric mean of
the per-round ratios with an interval at the Bonferroni level over the candidates. The default against its second
build gives the study's noise floor: only an interval entirely above 1 and above the floor's counts as a gain.

The rounds start at ``confirm_rounds`` and extend, up to ``confirm_max_rounds``, while the floor is wider than
±0.5%; whether to go on depends only on the default measured against itself, never on how a candidate looks, so the
extra rounds cannot favour a candidate (an internal-pilot design: the candidates' intervals keep their level).

The study loops confirm a study only once every config it needs is measured (``require_complete``): a confirmation,
and so a table, never speaks for a study that a crash, a dead worker or one still running left short.
"""

from __future__ import annotations

import datetime as _dt
import time
from typing import Any

import optuna
from optuna.trial import TrialState

from ..coordination.claim import CONFIRMING_ATTR, ClaimLost, ConfirmClaim, running_where
from ..coordination.heartbeat import heartbeat_interval_s
from ..coordination.interrupts import safe_point
from ..errors import MlaTuneError
from ..knobs import detail_key, knob, knob_names
from ..records import ATTRS_KEY, CONFIRM_KEY, Candidate, Confirmation, TrialResult
from ..runners import Runner
from ..stats import familywise_level, median, round_sig
from .._optuna_compat import storage_of, study_id
from .counts import measured_count
from ..types import Environment
from .budget import past, study_limit
from .measure import cases_of
from .plan import StudyTarget, config_set_key
from .progress import Progress, ProgressFn
from .sampling import recorded_status
from .rounds import ArmRounds, PairedRounds, run_rounds
from .verdict import FAMILY_LEVEL, judged

KNOB_NAMES = frozenset(knob_names())
FLOOR_TARGET = 0.005  # a floor wider than ±0.5% gets more rounds (up to confirm_max_rounds)
CONFIRM_STEP = 2  # rounds added at a time while the floor is too wide
EXTEND_FACTOR = 4  # confirm_max_rounds when not given: this many times confirm_rounds


def ran_as_key(r: TrialResult) -> str | None:
    """The configs of ``r`` as they ran: each knob that has an ``auto`` (the prefill backend, TRITON_MLA's split
    count) replaced by what its measurement reports it ran (``detail_key``), so that a config spelling out what
    ``auto`` resolved to here (``fa3`` on Hopper, the 8 splits vLLM's heuristic picked) and the ``auto`` config get
    one key, as the sampler's twins do. None where a shape stores no config."""
    results = [r.measurement] if r.shapes is None else [r.shapes[spec] for spec in sorted(r.shapes)]
    configs = []
    for shape in results:
        if shape is None or shape.config is None:
            return None
        details = shape.details or {}
        config = dict(shape.config)
        for name, value in config.items():
            bare = name.rpartition(".")[2]  # --backend auto names a parameter after its backend
            if bare in KNOB_NAMES and knob(bare).auto and details.get(detail_key(bare)) is not None:
                config[name] = str(details[detail_key(bare)])
        configs.append(config)
    return config_set_key(configs)


def candidates(study: optuna.Study, baseline_key: str, top: int) -> list[TrialResult]:
    """The ``top`` fastest configs that ran differently from each other and from the baseline (``ran_as_key``):
    a twin of vLLM's default can only confirm a bias, and two twins would take two of the ``top`` places."""
    trials = [TrialResult.from_trial(t) for t in sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)),
                                                         key=lambda t: t.value)]
    seen = {ran_as_key(r) or r.key for r in trials if r.key == baseline_key}
    best: list[TrialResult] = []
    for r in trials:
        ran_as = ran_as_key(r) or r.key
        if r.key and r.key != baseline_key and ran_as not in seen:
            seen.add(ran_as)
            best.append(r)
    return best[:top]


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
    baseline_key = config_set_key(target.default_configs())
    if not any(recorded_status(t) and TrialResult.from_trial(t).key == baseline_key
               for t in study.get_trials(deepcopy=False)):
        why = f"--timeout {r.timeout_s:g} s ran out before measuring" if timed_out else "nothing measured"
        raise StudyIncompleteError(f"{head}; {why} vLLM's default, so nothing can be confirmed", **hint)
    if done < limit and not timed_out:
        raise StudyIncompleteError(f"{head}; the {r.sampler} sampler proposed no other config: not confirmed")


def confirm(study: optuna.Study, target: StudyTarget, runner: Runner, env: Environment,
            progress: ProgressFn | None = None, *, force: bool = False, shared: bool = False,
            deadline: float | None = None) -> dict[str, Any] | None:
    """Confirm the best configs of a finished study; stores the ``Confirmation`` (study attr ``confirmation``) and
    returns it as stored.

    Skipped (the stored result returned) when no trial finished since the last confirmation, unless ``force``.
    ``shared``: other workers (other hosts too) may confirm the same study; the first to claim it does the work and
    the others get None (see ``ConfirmClaim``), so no GPU time goes into the same confirmation twice.
    ``deadline`` (the study's --timeout): past it, a wide noise floor gets no extra rounds.
    """
    n_done = measured_count(study)  # distinct measurements: a late reused duplicate changes no candidate
    stored = Confirmation.of_study(study.user_attrs)
    if stored is not None and stored.trials == n_done and not force:
        return stored.to_attrs()
    held = ConfirmClaim(study, n_done) if shared else None
    if held is not None and not held.take():
        return None
    try:
        return _confirm(study, target, runner, env, n_done, progress, held, deadline)
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


def max_rounds(r: Any) -> int:
    """The rounds a confirmation may extend to (``StudyRequest.confirm_max_rounds``, else 4 x confirm_rounds)."""
    return r.confirm_max_rounds if r.confirm_max_rounds is not None else EXTEND_FACTOR * r.confirm_rounds


def _confirm(study: optuna.Study, target: StudyTarget, runner: Runner, env: Environment, n_done: int,
             progress: ProgressFn | None, held: ConfirmClaim | None, deadline: float | None = None
             ) -> dict[str, Any]:
    r = target.request
    default_configs = target.default_configs()
    picks = candidates(study, config_set_key(default_configs), r.confirm_top)
    specs = [s.spec for s in target.shapes]
    cand_configs = [t.configs(specs) for t in picks]
    pr = PairedRounds(cases_of(target, default_configs), [cases_of(target, c) for c in cand_configs],
                      [s.weight for s in target.shapes])
    level = familywise_level(max(1, len(picks)), FAMILY_LEVEL)

    def on_round(done: int, half: float | None) -> None:
        if progress:
            floor = f", noise floor ±{100 * half:.2f}%" if half is not None else ""
            progress(Progress(target.name, "confirm", done, max_rounds(r), message=f"round {done}{floor}"))

    if progress:
        progress(Progress(target.name, "confirm", 0, max_rounds(r),
                          message=f"{len(picks)} candidate(s): " + ", ".join(f"trial #{t.number}" for t in picks)))

    rounds = run_rounds(pr, runner, r.confirm_rounds, max(r.confirm_rounds, max_rounds(r)), CONFIRM_STEP,
                        FLOOR_TARGET, level, more_allowed=lambda: not past(deadline),
                        check=held.check if held is not None else None, on_round=on_round)
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    cands = tuple(_candidate(t, configs, arm, pr.failed) for t, configs, arm in zip(picks, cand_configs, pr.arms))
    floor_rounds = pr.floor.rounds() if pr.failed is None and pr.done else None
    result = judged(Confirmation(n_done, rounds, date, env.runner, tuple(default_configs), cands, None,
                                 floor_rounds=floor_rounds, gpu_s=round_sig(pr.gpu_s, 4),
                                 pairing="; ".join(sorted(pr.pairing)) or None)).to_attrs()
    if held is not None:  # shared: never replace a confirmation of a newer state of the study
        newer = Confirmation.of_study(storage_of(study).get_study_user_attrs(study_id(study)))
        if newer is not None and newer.trials > n_done:
            return newer.to_attrs()
    study.set_user_attr(CONFIRM_KEY, result)
    if progress:
        progress(Progress(target.name, "done", rounds, rounds, message=outcome(Confirmation.from_attrs(result))))
    return result


def outcome(conf: Confirmation) -> str:
    """What a judged confirmation decided, in a few words: the gain confirmed, or why vLLM's default stays."""
    rounds = f"{conf.rounds} rounds" + (f", {conf.gpu_s:g} GPU s" if conf.gpu_s else "")
    if conf.winner is not None:
        c = conf.candidates[conf.winner]
        return f"confirmed x{c.speedup:.3f} [{c.ci[0]:.3f}, {c.ci[1]:.3f}] (trial #{c.trial}; {rounds})"
    ok = [c for c in conf.candidates if c.status == "ok" and c.speedup is not None]
    if not conf.candidates:
        return f"vLLM's default kept: no other config ran differently ({rounds})"
    if not ok:
        return f"vLLM's default kept: every candidate failed ({rounds})"
    best = max(ok, key=lambda c: c.speedup)
    return (f"vLLM's default kept: best x{best.speedup:.3f} [{best.ci[0]:.3f}, {best.ci[1]:.3f}] is not a gain "
            f"beyond noise ({rounds})")


def _candidate(t: TrialResult, configs: list[dict], arm: ArmRounds, default_failed: str | None) -> Candidate:
    failed = default_failed or arm.failed
    if failed is not None:
        return Candidate(t.number, tuple(configs), "failed", message=failed)
    n = len(arm.best)
    return Candidate(t.number, tuple(configs), "ok", message=arm.note,
                     default_ms=round_sig(median(arm.default[:n])), best_ms=round_sig(median(arm.best)),
                     samples={"default": arm.default_samples, "best": arm.samples}, rounds=arm.rounds())


__all__ = ["ATTRS_KEY", "CONFIRMING_ATTR", "CONFIRM_KEY", "FLOOR_TARGET", "StudyIncompleteError",
           "await_confirmation", "candidates", "confirm", "max_rounds", "outcome", "require_complete"]
