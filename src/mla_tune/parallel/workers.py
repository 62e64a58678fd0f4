"""One worker of a multi-GPU study: runs every study of the workload on its GPU, cooperating through the storage.

Workers share studies, not a schedule: each runs all the studies of the workload, worker ``i`` starting at study
``i`` (so they spread out), and Optuna's storage does the sharing (samplers see each other's trials; ``claim``
keeps a config from being measured twice). Then a second pass waits for the other workers' running trials of each
study (``study.settle``), failing and re-enqueueing those of dead workers (at once on this host, after the heartbeat
grace period on others), and runs what is left (the retries); a study still short of a config is not confirmed.
Last, the confirmations, shared the same way: a worker confirms each study no live worker has claimed
(``confirm.ConfirmClaim``), so workers of several hosts on one storage do not confirm the same study twice.

Started by ``scale.launch`` as ``python -m mla_tune.parallel.workers``, its job (``WorkerJob``) the first line
of its stdin, so that the storage URL and any password in it are never written to disk; reports progress as JSON
lines on stdout and its result in the job's result file. When the launcher dies (stdin closes), the worker stops
as on Ctrl-C. (``python -m mla_tune.parallel.workers JOB.json`` reads the job from a file instead.)
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from ..errors import MlaTuneError
from ..runners import Runner, register_runner
from ..storage.urls import parse_storage, scrub
from ..study.confirm import await_confirmation, confirm
from ..study.trials import ProgressFn, deadline_of, run_trials, settle
from ..study.loop import Coordination, Incomplete, run_studies
from ..study.plan import StudyTarget
from ..study.setup import build_requests, open_runner
from ..types import Environment
from ..coordination import interrupts
from ..coordination.interrupts import check


@dataclass(frozen=True)
class WorkerJob:
    """What one worker does: the study request (``api.run_study``'s keywords), its place among the workers."""

    index: int
    n_workers: int
    gpu: str
    storage: str
    runner: str
    study: dict[str, Any] = field(default_factory=dict)  # backend(s), workload(s), model, tp(s), ... as in run_study
    result: str = ""  # where the worker writes its result (JSON)
    # How this process makes the runner: its factory's import path and the launcher's sys.path, as multiprocessing
    # hands a spawned process the parent's path (a runner registered in the launcher is not registered here).
    runner_factory: str = ""
    sys_path: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class WorkerResult:
    environment: dict[str, Any]
    studies: list[str]
    excluded: dict[str, str]


def rotated(targets: list[StudyTarget], index: int) -> list[StudyTarget]:
    k = index % len(targets) if targets else 0
    return targets[k:] + targets[:k]


def work(job: WorkerJob, progress: ProgressFn | None = None) -> WorkerResult:
    """Run this worker's share of the studies (see the module docstring); finished trials are in the storage."""
    kw = dict(job.study)
    if kw.get("seed") is not None:  # the same seed in every worker would propose the same configs in lockstep
        kw["seed"] = kw["seed"] + job.index
    requests = build_requests(**kw)
    spec = parse_storage(job.storage)
    with open_runner(job.runner) as runner:
        ran = run_studies(runner, requests, spec, Shared(job.index), progress)
    return WorkerResult(ran.environment.as_dict(), [t.name for t in ran.targets], ran.excluded)


class Shared(Coordination):
    """Worker ``index`` of several on one storage: trials, then settling, then confirmations, each study shared."""

    def __init__(self, index: int) -> None:
        self.index = index

    def run(self, targets: list[StudyTarget], store: optuna.storages.BaseStorage, runner: Runner,
            env: Environment, progress: ProgressFn | None) -> None:
        mine = rotated(targets, self.index)
        deadlines = {}
        for target in mine:
            check()
            deadlines[target.name] = deadline_of(target)
            run_trials(target, store, runner, env, progress, deadlines[target.name])
        incomplete, settled = Incomplete(), []
        for target in mine:
            check()
            study = settle(target, store, runner, env, progress, deadlines[target.name])
            if incomplete.check(study, target, deadlines[target.name]):
                settled.append(target)
        # Confirmation is shared the same way: each worker walks every study from its own start and confirms those
        # no live worker (of this host or another) has claimed; then it waits for the claimed ones, taking over a
        # claim whose worker died.
        claimed = []
        for target in settled:
            check()
            study = optuna.load_study(study_name=target.name, storage=store)
            if confirm(study, target, runner, env, progress, shared=True, deadline=deadlines[target.name]) is None:
                claimed.append(target)
        for target in claimed:
            check()
            await_confirmation(target, store, runner, env, progress)
        incomplete.raise_any()


def _watch_parent() -> None:
    """Stop like Ctrl-C when the launcher is gone: its end of our stdin pipe closes."""
    try:
        while os.read(0, 1024):  # the raw fd: a buffered reader's lock would block interpreter shutdown
            pass
    except OSError:
        pass
    os.kill(os.getpid(), signal.SIGINT)


def _emit(gpu: str) -> Callable[[Any], None]:
    lock = threading.Lock()

    def emit(p: Any) -> None:
        with lock:
            sys.stdout.write(json.dumps({"gpu": gpu, "progress": dataclasses.asdict(p)}) + "\n")
            sys.stdout.flush()

    return emit


def _read_job_line() -> str:
    """The first line of stdin, read from the raw descriptor (``_watch_parent`` then reads it to its end)."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(0, 65536)
        if not chunk:
            break
        data += chunk
    return data.decode()


def main(argv: list[str]) -> int:
    text = Path(argv[0]).read_text() if argv else _read_job_line()
    if not text.strip():
        return 1  # the launcher died before handing the job over: nothing to do, nowhere to report
    job = WorkerJob(**json.loads(text))
    sys.path += [p for p in job.sys_path if p not in sys.path]
    if job.runner_factory:
        register_runner(job.runner.partition(":")[0], job.runner_factory)
    interrupts.install()
    threading.Thread(target=_watch_parent, daemon=True).start()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # the launcher shows progress; failures are kept as data
    result: dict[str, Any]
    code = 0
    try:
        result = {"ok": True, **dataclasses.asdict(work(job, _emit(job.gpu)))}
    except MlaTuneError as e:
        result, code = {"ok": False, "error": scrub(str(e), job.storage), "exit_code": e.exit_code}, e.exit_code
    except KeyboardInterrupt:
        result, code = {"ok": False, "error": "interrupted", "exit_code": 130}, 130
    except Exception as e:  # a bug: the traceback goes to stderr, the launcher's one line names it
        traceback.print_exc()
        first = scrub((str(e).splitlines() or [""])[0], job.storage)  # the result file is on disk: no secret in it
        result, code = {"ok": False, "error": f"crashed: {type(e).__name__}: {first}", "exit_code": 1}, 1
    Path(job.result).write_text(json.dumps(result))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
