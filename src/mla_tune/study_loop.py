"""The one study loop: run and confirm every study of a request through an open runner, alone or as a worker.

How the studies are shared is a ``Coordination``: ``Solo`` runs and confirms them one after another in this
process (``api.run_study``); ``workers.Shared`` is one of several worker processes cooperating through the storage.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any

from .confirm import confirm
from .plan import StudyRequest, StudyTarget, plan
from .runners import Runner
from .space import SearchSpace
from .storage import StorageSpec, open_storage
from .study import ProgressFn, check_space_available, run_trials
from .study_setup import preflight
from .types import Environment


class Coordination(abc.ABC):
    """How the studies of one request are run: by this process alone, or shared with other workers."""

    def wrap(self, runner: Runner) -> Runner:
        """The runner the loop measures with (a worker's stops at a measurement on Ctrl-C)."""
        return runner

    @abc.abstractmethod
    def run(self, targets: list[StudyTarget], store: Any, runner: Runner, env: Environment,
            progress: ProgressFn | None) -> None:
        """Run and confirm the studies of ``targets`` in the Optuna storage ``store``."""


class Solo(Coordination):
    """One process: each study's trials, then its confirmation, one study after another."""

    def run(self, targets: list[StudyTarget], store: Any, runner: Runner, env: Environment,
            progress: ProgressFn | None) -> None:
        for target in targets:
            study = run_trials(target, store, runner, env, progress)
            confirm(study, target, runner, env, progress)


@dataclass(frozen=True)
class StudiesRun:
    environment: Environment
    storage: Any  # the open Optuna storage the studies are in
    targets: list[StudyTarget]
    excluded: dict[str, str]  # prefill backends left out here, with reasons


def run_studies(runner: Runner, request: StudyRequest, space: SearchSpace, spec: StorageSpec,
                coordination: Coordination | None = None, progress: ProgressFn | None = None) -> StudiesRun:
    """Run (or resume) the studies of ``request``; finished trials and confirmations are in the storage.

    Order matters for "bad input writes nothing": the runner is asked whether the backend and shapes run here
    before the storage is opened (created) and a study written.
    """
    coordination = coordination or Solo()
    runner = coordination.wrap(runner)
    preflight(runner, request, space)
    env = runner.environment()
    space, excluded = check_space_available(space, runner)
    store = open_storage(spec, create=True)
    targets = plan(request, env, space)
    coordination.run(targets, store, runner, env, progress)
    return StudiesRun(env, store, targets, excluded)


__all__ = ["Coordination", "Solo", "StudiesRun", "run_studies"]
