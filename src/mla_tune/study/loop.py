"""The one study loop: run and confirm every study of a request through an open runner, alone or as a worker.

How the studies are shared is a ``Coordination``: ``Solo`` runs and confirms them one after another in this
process (``api.run_study``); ``workers.Shared`` is one of several worker processes cooperating through the storage.
Either way a study is confirmed only when complete (``confirm.require_complete``), measurements are the safe points
where Ctrl-C and SIGTERM stop the loop (``Interruptible``), and a loop that stops leaves no trial of its own
RUNNING or WAITING (``claim.release_studies``).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..coordination.claim import release_studies
from ..coordination.interrupts import check, safe_point
from ..errors import StorageError, UsageError
from ..runners import Runner, Wrapper
from ..space_auto import AnySpace
from ..storage.urls import StorageSpec, open_storage
from ..types import Case, Environment, Measurement, PairedMeasurement
from .confirm import StudyIncompleteError, await_confirmation, confirm, require_complete
from .trials import ProgressFn, check_space_available, deadline_of, run_trials, settle
from .plan import StudyRequest, StudyTarget, plan
from .setup import preflight


class Coordination(abc.ABC):
    """How the studies of one request are run: by this process alone, or shared with other workers."""

    def wrap(self, runner: Runner) -> Runner:
        """The runner the loop measures with: Ctrl-C and SIGTERM stop it at a measurement (``interrupts``)."""
        return Interruptible(runner)

    @abc.abstractmethod
    def run(self, targets: list[StudyTarget], store: Any, runner: Runner, env: Environment,
            progress: ProgressFn | None) -> None:
        """Run and confirm the studies of ``targets`` in the Optuna storage ``store``."""


class Solo(Coordination):
    """One process: each study's trials, then its confirmation, one study after another.

    Other processes may still share the storage (a user can start the same study twice): a study is confirmed
    only once theirs are settled too (``settle``), and by one process (a shared confirmation claim)."""

    def run(self, targets: list[StudyTarget], store: Any, runner: Runner, env: Environment,
            progress: ProgressFn | None) -> None:
        incomplete = Incomplete()
        for target in targets:
            check()
            deadline = deadline_of(target)
            run_trials(target, store, runner, env, progress, deadline)
            study = settle(target, store, runner, env, progress, deadline)
            if incomplete.check(study, target, deadline) and confirm(study, target, runner, env, progress,
                                                                     shared=True, deadline=deadline) is None:
                await_confirmation(target, store, runner, env, progress)
        incomplete.raise_any()


class Incomplete:
    """The studies that could not be confirmed (``require_complete``): the others go on, then one error says why."""

    def __init__(self) -> None:
        self.errors: list[StudyIncompleteError] = []

    def check(self, study: Any, target: StudyTarget, deadline: float | None) -> bool:
        try:
            require_complete(study, target, deadline)
        except StudyIncompleteError as e:
            self.errors.append(e)
            return False
        return True

    def raise_any(self) -> None:
        if self.errors:
            first = self.errors[0]
            more = f" (and {len(self.errors) - 1} more studies)" if len(self.errors) > 1 else ""
            raise StudyIncompleteError(first.message + more, hint=first.hint or "")


class Interruptible(Wrapper):
    """A runner whose measurements are safe points: a held Ctrl-C or SIGTERM is raised when one starts or runs."""

    def measure(self, case: Case) -> Measurement:
        with safe_point():
            return self.inner.measure(case)

    def measure_paired(self, cases: Sequence[Case]) -> PairedMeasurement:
        with safe_point():
            return self.inner.measure_paired(cases)


@dataclass(frozen=True)
class StudiesRun:
    environment: Environment
    storage: Any  # the open Optuna storage the studies are in
    targets: list[StudyTarget]
    excluded: dict[str, str]  # prefill backends (and decode backends of --backend auto) left out here, with reasons


def run_studies(runner: Runner, requests: Sequence[tuple[StudyRequest, AnySpace]], spec: StorageSpec,
                coordination: Coordination | None = None, progress: ProgressFn | None = None) -> StudiesRun:
    """Run (or resume) the studies of ``requests`` (``study.setup.build_requests``: several backends, workloads and
    TPs) through one runner, in order; finished trials and confirmations are in the storage.

    Order matters for "bad input writes nothing": the runner is asked whether every backend and shape runs here
    before the storage is opened (created) and a study written.
    """
    coordination = coordination or Solo()
    runner = coordination.wrap(runner)
    for request, space in requests:
        preflight(runner, request, space)
    env = runner.environment()
    targets: list[StudyTarget] = []
    excluded: dict[str, str] = {}
    for request, space in requests:
        space, left_out = check_space_available(space, runner, request)
        excluded.update(left_out)
        targets += plan(request, env, space)
    targets = _distinct(targets)
    store = open_storage(spec, create=True)
    try:
        coordination.run(targets, store, runner, env, progress)
    except BaseException as e:  # Ctrl-C, SIGTERM, an error: leave nothing RUNNING or WAITING for others to wait on
        lost = database_error(e)
        if lost is None:
            release_studies(store, [t.name for t in targets])
            raise
        # The database went away mid-study: this process's trials stay RUNNING there until the next run sees
        # that this process is gone and fails them (at once on this host); nothing finished is lost.
        raise StorageError(f"storage {spec.display} failed mid-study: {_first_line(lost)}",
                           hint="finished trials are kept; run the same command once the database is back") from e
    return StudiesRun(env, store, targets, excluded)


def _distinct(targets: list[StudyTarget]) -> list[StudyTarget]:
    """Each study once: two workloads of one call that share a shape share its per-shape study. Where they weigh
    it differently the study could hold only one of them: refused before anything is written."""
    first: dict[str, StudyTarget] = {}
    for t in targets:
        seen = first.setdefault(t.name, t)
        if seen.shapes != t.shapes:
            raise UsageError(f"workloads {seen.request.workload.name} and {t.request.workload.name} both have "
                             f"{t.label} with different weights: one study cannot hold both",
                             hint="run them in separate calls with separate --storage, or give one of them")
    return list(first.values())


def database_error(e: BaseException) -> BaseException | None:
    """The database driver's error behind ``e`` (SQLAlchemy's or the driver's own, through Optuna's wrappers and
    the errors raised while handling it), or None when ``e`` is not a lost database."""
    seen: set[int] = set()
    found = None
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if type(e).__module__.split(".")[0] in ("sqlalchemy", "psycopg", "psycopg2", "pymysql", "sqlite3"):
            found = e  # the innermost one says it best ("connection refused")
        e = e.__cause__ or e.__context__
    return found


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


__all__ = ["Coordination", "Incomplete", "Interruptible", "Solo", "StudiesRun", "database_error", "run_studies"]
