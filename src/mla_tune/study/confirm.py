"""Paired confirmation: re-measure the best configs against vLLM's default, interleaved, so drift cannot fake a gain.

Trials are measured minutes apart; clocks, temperature and neighbours drift in between, and a 2% "gain"
between two trials can be drift. Here each candidate and the default are measured back to back for several
rounds (A A' B, then B A' A, so that none always goes first) and the speedup is the geometric mean of the
per-round ratios with an interval at the Bonferroni level over the candidates (``verdict.judge``). A' is the
default measured a second time, separately: the A/A' ratios give the study's noise floor, and only an interval
entirely above 1 and above the floor's counts as a gain.

Where the floor itself comes out wide (on the H200, heavy shapes under the power cap moved by ±3-6% between
rounds), every candidate gets more rounds, up to ``confirm_max_rounds``, until the floor is within ±1.5%. Whether to
go on depends only on the default measured against itself, never on how a candidate looks, so the extra rounds
cannot favour a candidate (an internal-pilot design: the candidates' intervals keep their level).

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

from ..coordination.claim import CONFIRMING_ATTR, ClaimLost, ConfirmClaim, running_where
from ..coordination.heartbeat import heartbeat_interval_s
from ..coordination.interrupts import safe_point
from ..errors import MlaTuneError
from ..knobs import detail_key, knob, knob_names
from ..records import ATTRS_KEY, CONFIRM_KEY, Candidate, Confirmation, Rounds, TrialResult
from ..runners import Runner
from ..stats import median, round_sig
from ..storage._optuna_compat import storage_of, study_id
from ..tables.summary import measured_count
from ..types import Environment
from .budget import past, study_limit
from .measure import measure_set
from .plan import StudyTarget, config_set_key
from .progress import Progress, ProgressFn
from .sampling import recorded_status
from .verdict import judge_candidates, judged

KNOB_NAMES = frozenset(knob_names())
FLOOR_TARGET = 0.015  # a floor wider than ±1.5% gets more rounds (up to confirm_max_rounds)
EXTEND_FACTOR = 3  # confirm_max_rounds when not given: this many times confirm_rounds


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
    """The rounds a confirmation may extend to (``StudyRequest.confirm_max_rounds``, else 3 x confirm_rounds)."""
    return r.confirm_max_rounds if r.confirm_max_rounds is not None else EXTEND_FACTOR * r.confirm_rounds


def floor_too_wide(results: list[Candidate]) -> float | None:
    """The noise floor's half-width where it is wider than ``FLOOR_TARGET`` (None: narrow enough, or no floor)."""
    _, _, floor = judge_candidates(results)
    if floor is None:
        return None
    half = (floor.ci[1] - floor.ci[0]) / 2
    return half if half > FLOOR_TARGET else None


def _confirm(study: optuna.Study, target: StudyTarget, runner: Runner, env: Environment, n_done: int,
             progress: ProgressFn | None, held: ConfirmClaim | None, deadline: float | None = None
             ) -> dict[str, Any]:
    r = target.request
    default_configs = target.default_configs()
    picks = candidates(study, config_set_key(default_configs), r.confirm_top)
    check = held.check if held is not None else None
    runs = [_Rounds(t, t.configs([s.spec for s in target.shapes]), default_configs) for t in picks]
    rounds, limit = r.confirm_rounds, max(r.confirm_rounds, max_rounds(r))
    for i, run in enumerate(runs):
        if progress:
            progress(Progress(target.name, "confirm", i, len(picks), message=f"trial {run.trial.number}"))
        run.measure_to(runner, target, rounds, check)
    while rounds < limit and not past(deadline) and (half := floor_too_wide([run.candidate() for run in runs])):
        before, rounds = rounds, min(limit, rounds + r.confirm_rounds)
        for i, run in enumerate(runs):
            if progress:
                progress(Progress(target.name, "confirm", i, len(picks), message=f"trial {run.trial.number}, "
                                  f"{rounds} rounds: noise floor ±{100 * half:.1f}%"))
            run.measure_to(runner, target, rounds, check)
        if any(run.failed_after(before) for run in runs):
            # A measurement failed in the extra rounds: every candidate is judged on the rounds all of them
            # completed, so that the extension (up to 12 more chances to fail, more for a flaky config) never
            # decides which candidate stands. The failure is noted on its candidate.
            for run in runs:
                run.truncate(before)
            rounds = before
            break
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    result = judged(Confirmation(n_done, rounds, date, env.runner, tuple(default_configs),
                                 tuple(run.candidate() for run in runs), None)).to_attrs()
    if held is not None:  # shared: never replace a confirmation of a newer state of the study
        newer = Confirmation.of_study(storage_of(study).get_study_user_attrs(study_id(study)))
        if newer is not None and newer.trials > n_done:
            return newer.to_attrs()
    study.set_user_attr(CONFIRM_KEY, result)
    if progress:
        progress(Progress(target.name, "done", len(picks), len(picks)))
    return result


class _Rounds:
    """One candidate's paired rounds against the default, extendable: round ``i`` measures the default, the default
    built again and the candidate (A A' B), every other round in reverse (B A' A), so that none always goes first
    or last. A failed measurement ends the candidate (``failed``); its rounds are not used."""

    def __init__(self, trial: TrialResult, cand_configs: list[dict], default_configs: list[dict]) -> None:
        self.trial, self.cand_configs = trial, cand_configs
        self.order = (("default", default_configs), ("again", default_configs), ("best", cand_configs))
        self.ms: dict[str, list[float]] = {"default": [], "again": [], "best": []}
        self.samples = dict.fromkeys(self.ms, 0)
        self.failed: str | None = None
        self.failed_round: int | None = None  # the round (from 0) its failure came in
        self.note: str | None = None  # a failure in rounds dropped by ``truncate``

    def measure_to(self, runner: Runner, target: StudyTarget, rounds: int,
                   check: Callable[[], None] | None = None) -> None:
        while self.failed is None and len(self.ms["best"]) < rounds:
            if check is not None:
                check()
            i = len(self.ms["best"])
            for slot, configs in (self.order if i % 2 == 0 else self.order[::-1]):
                got = measure_set(runner, target, configs)
                if got.failure is not None:
                    ws, m = got.failure
                    self.failed, self.failed_round = f"{ws.spec}: {m.status.value}: {m.message}", i
                    return
                self.ms[slot].append(got.total_ms)
                self.samples[slot] += got.n_samples

    def failed_after(self, rounds: int) -> bool:
        return self.failed is not None and self.failed_round is not None and self.failed_round >= rounds

    def truncate(self, rounds: int) -> None:
        """Back to the first ``rounds`` rounds; a failure after them becomes a note (samples counts stay: they say
        what was measured, not what was judged)."""
        for k in self.ms:
            del self.ms[k][rounds:]
        if self.failed_after(rounds):
            self.note = f"judged on {rounds} rounds; round {self.failed_round + 1} failed: {self.failed}"
            self.failed = self.failed_round = None

    def candidate(self) -> Candidate:
        t, ms = self.trial, self.ms
        if self.failed is not None:
            return Candidate(t.number, tuple(self.cand_configs), "failed", message=self.failed)
        n = len(ms["best"])  # whole rounds only
        return Candidate(t.number, tuple(self.cand_configs), "ok", message=self.note,
                         default_ms=round_sig(median(ms["default"][:n])),
                         best_ms=round_sig(median(ms["best"])),
                         samples={"default": self.samples["default"], "best": self.samples["best"]},
                         rounds=Rounds(*(tuple(round_sig(x) for x in ms[k][:n]) for k in ("default", "best", "again"))))


__all__ = ["ATTRS_KEY", "CONFIRMING_ATTR", "CONFIRM_KEY", "FLOOR_TARGET", "StudyIncompleteError",
           "await_confirmation", "candidates", "confirm", "floor_too_wide", "max_rounds", "require_complete"]
