"""The public API: what the CLI calls and what users script. Never prints; raises ``MlaTuneError``s."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import StudyNotFoundError, UnknownNameError, UsageError
from .models import get_model, load_models
from .plan import KV_CACHE_DTYPES, OBJECTIVES, StudyRequest, plan
from .runners import Runner, make_runner
from .sampling import SAMPLERS
from .space import BACKENDS, SearchSpace, load_space
from .storage import parse_storage
from .summary import StudySummary
from .types import BackendStatus, Environment
from .workloads import Workload, get_workload, load_workloads


@dataclass(frozen=True)
class StudyOutcome:
    storage: str
    environment: Environment
    summaries: list[StudySummary]
    excluded: dict[str, str] = field(default_factory=dict)  # prefill backends left out here, with reasons


# vLLM MLA backends that are known but deliberately not searched, and why (an "unknown backend" would mislead).
NOT_TUNED = {
    "FLASHMLA_SPARSE": "DeepSeek-V3.2's sparse attention reads the indexer's top-k token indices, which no "
                       "workload here models (every workload is dense MLA)",
}


def build_request(*, backend: str, workload: str, model: str = "deepseek-v3", tp: int = 1,
                  kv_cache_dtype: str = "auto", objective: str = "per-shape", sampler: str = "auto",
                  n_trials: int | None = None, timeout_s: float | None = None, seed: int | None = 0,
                  confirm_top: int = 3, confirm_rounds: int = 6) -> tuple[StudyRequest, SearchSpace]:
    """Validate every name and number of a study request; nothing is opened or written."""
    if backend in NOT_TUNED:
        raise UsageError(f"backend {backend} is not tuned by mla-tune: {NOT_TUNED[backend]}",
                         hint=f"tunable backends: {', '.join(sorted(BACKENDS))}")
    if backend not in BACKENDS:
        raise UnknownNameError("backend", backend, BACKENDS)
    if sampler not in SAMPLERS:
        raise UnknownNameError("sampler", sampler, SAMPLERS)
    if objective not in OBJECTIVES:
        raise UnknownNameError("objective", objective, OBJECTIVES)
    if kv_cache_dtype not in KV_CACHE_DTYPES:
        raise UnknownNameError("kv-cache dtype", kv_cache_dtype, KV_CACHE_DTYPES)
    if n_trials is not None and n_trials < 1:
        raise UsageError(f"--trials must be at least 1, got {n_trials}")
    if timeout_s is not None and timeout_s <= 0:
        raise UsageError(f"--timeout must be positive, got {timeout_s}")
    if confirm_top < 1:
        raise UsageError(f"confirmation needs at least 1 candidate, got {confirm_top}")
    if confirm_rounds < 2:
        raise UsageError(f"confirmation needs at least 2 rounds, got {confirm_rounds}")
    space = load_space(backend)
    wl = get_workload(workload)
    dims = get_model(model, tp)
    return StudyRequest(backend, wl, dims, kv_cache_dtype, objective, sampler, n_trials, timeout_s, seed,
                        confirm_top, confirm_rounds), space


@contextlib.contextmanager
def gpu_locked(runner: Runner) -> Iterator[None]:
    """Hold the runner's GPU for this process: a second measuring process on it would corrupt both timings."""
    if runner.gpu is None:
        yield
        return
    from .gpu_lock import acquire

    lock = acquire(runner.gpu)
    try:
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def open_runner(runner: str | Runner) -> Iterator[Runner]:
    """A runner from its name (``vllm``, ``replay:PATH``), closed afterwards; a given instance is left open."""
    if isinstance(runner, str):
        r = make_runner(runner)
        try:
            yield r
        finally:
            r.close()
    else:
        yield runner


def require_backend(runner: Runner, backend: str) -> None:
    from .errors import RunnerUnavailableError

    st = runner.backend_status(backend, "decode")
    if not st.available:
        raise RunnerUnavailableError(f"{backend} cannot run here: {st.reason}",
                                     hint="`mla-tune backends` lists what can")


def preflight(runner: Runner, request: StudyRequest, space: SearchSpace) -> None:
    """Refuse before anything is written: a backend that cannot run here, or shapes the runner cannot answer
    (e.g. a replay of shapes, TP or model dims that were never recorded)."""
    from .errors import RunnerUnavailableError
    from .types import Case, freeze_params

    require_backend(runner, request.backend)
    for ws in request.workload.shapes:
        case = Case(request.backend, ws.shape, request.dims, freeze_params(space.default_config(ws.shape)),
                    request.kv_cache_dtype)
        why = runner.unanswerable(case)
        if why:
            raise RunnerUnavailableError(why, hint="record it with `mla-tune sweep` on a GPU, or pick a recorded "
                                                   "workload, --tp and --model")


def run_study(*, backend: str, workload: str, model: str = "deepseek-v3", tp: int = 1,
              kv_cache_dtype: str = "auto", objective: str = "per-shape", sampler: str = "auto",
              n_trials: int | None = None, timeout_s: float | None = None, storage: str | None = None,
              runner: str | Runner = "vllm", seed: int | None = 0, confirm_top: int = 3, confirm_rounds: int = 6,
              progress: Callable[[Any], None] | None = None) -> StudyOutcome:
    """Run (or resume) the studies of one workload, confirm their winners, and summarize them.

    Order matters for "bad input writes nothing": names are validated, the runner is made and asked whether
    the backend runs here, and only then is the storage opened (created) and a study written.
    """
    from .confirm import confirm
    from .storage import open_storage
    from .study import check_space_available, run_trials
    from .summary import summarize

    request, space = build_request(backend=backend, workload=workload, model=model, tp=tp,
                                   kv_cache_dtype=kv_cache_dtype, objective=objective, sampler=sampler,
                                   n_trials=n_trials, timeout_s=timeout_s, seed=seed, confirm_top=confirm_top,
                                   confirm_rounds=confirm_rounds)
    spec = parse_storage(storage)
    with open_runner(runner) as r, gpu_locked(r):
        preflight(r, request, space)
        env = r.environment()
        space, excluded = check_space_available(space, r)
        store = open_storage(spec, create=True)
        summaries = []
        for target in plan(request, env, space):
            study = run_trials(target, store, r, env, progress)
            confirm(study, target, r, env, progress)
            summaries.append(summarize(study))
    return StudyOutcome(spec.display, env, summaries, excluded)


def find_studies(*, storage: str | None = None, backend: str | None = None, model: str | None = None,
                 tp: int | None = None, kv_cache_dtype: str | None = None, workload: str | None = None,
                 gpu: str | None = None) -> list[StudySummary]:
    """Summaries of the stored studies that match every filter given."""
    from .storage import open_storage
    from .summary import load_summaries

    if backend and backend not in BACKENDS:
        raise UnknownNameError("backend", backend, BACKENDS)
    store = open_storage(parse_storage(storage), create=False)
    wl: Workload | None = get_workload(workload) if workload else None

    def keep(name: str, a: dict[str, Any]) -> bool:
        label = name.rsplit("/", 1)[1]
        return not ((backend and a.get("backend") != backend)
                    or (model and a.get("model", {}).get("model") != model)
                    or (tp is not None and a.get("model", {}).get("tp") != tp)
                    or (kv_cache_dtype and a.get("kv_cache_dtype") != kv_cache_dtype)
                    or (gpu and name.split("/", 1)[0] != gpu)
                    or (wl and label not in wl.specs and label != f"mix:{wl.name}"))

    return load_summaries(store, keep)


def export_table(output: Path, *, storage: str | None = None, backend: str, model: str = "deepseek-v3",
                 tp: int = 1, kv_cache_dtype: str = "auto", workload: str | None = None,
                 gpu: str | None = None) -> tuple[Path, dict[str, Any]]:
    """Write the tuning table of the matching studies to ``output`` (atomically); returns it too."""
    from .export import write_table
    from .table import build_table

    if backend in NOT_TUNED:
        raise UsageError(f"backend {backend} is not tuned by mla-tune: {NOT_TUNED[backend]}",
                         hint=f"tunable backends: {', '.join(sorted(BACKENDS))}")
    if backend not in BACKENDS:
        raise UnknownNameError("backend", backend, BACKENDS)
    get_model(model, tp)
    found = find_studies(storage=storage, backend=backend, model=model, tp=tp, kv_cache_dtype=kv_cache_dtype,
                         workload=workload, gpu=gpu)
    if not found:
        raise StudyNotFoundError(f"no {backend} studies for {model} tp{tp} (kv {kv_cache_dtype})"
                                 + (f" and workload {workload}" if workload else "") + " in this storage",
                                 hint="`mla-tune show` lists the stored studies")
    gpus = sorted({s.name.split("/", 1)[0] for s in found})
    if len(gpus) > 1:
        raise UsageError(f"studies from several GPUs match: {', '.join(gpus)}", hint="pick one with --gpu")
    if workload:  # keep the workload's own order
        order = {spec: i for i, spec in enumerate(get_workload(workload).specs)}
        found.sort(key=lambda s: order.get(s.label, len(order)))
    table = build_table(found)
    return write_table(table, output), table


def list_workloads() -> dict[str, Workload]:
    return load_workloads()


def list_spaces() -> dict[str, SearchSpace]:
    return {b: load_space(b) for b in BACKENDS}


def list_models() -> dict[str, Any]:
    return load_models()


def list_backends(runner: str | Runner = "vllm") -> tuple[Environment, tuple[BackendStatus, ...]]:
    with open_runner(runner) as r:
        return r.environment(), r.backends()


def run_sweep(*, backend: str, workload: str, output: Path, model: str = "deepseek-v3", tp: int = 1,
              kv_cache_dtype: str = "auto", runner: str | Runner = "vllm",
              progress: Callable[[Any], None] | None = None) -> int:
    """Record an exhaustive sweep (all raw samples) for the replay runner; resumes an interrupted file."""
    from .study import check_space_available
    from .sweep import run_sweep as _run

    request, space = build_request(backend=backend, workload=workload, model=model, tp=tp,
                                   kv_cache_dtype=kv_cache_dtype)
    with open_runner(runner) as r, gpu_locked(r):
        if r.name == "replay":
            raise UsageError("a sweep records measurements; the replay runner would only copy a recording",
                             hint="sweep with --runner vllm on a GPU")
        require_backend(r, backend)
        space, _ = check_space_available(space, r)
        return _run(r, space, request.workload, request.dims, kv_cache_dtype, Path(output), progress)


@dataclass(frozen=True)
class ParallelOutcome:
    """What ``run_study_parallel`` returns: the studies' outcome (None if no worker finished) and every worker."""

    outcome: StudyOutcome | None
    workers: list[Any]  # scale.WorkerReport, one per GPU

    @property
    def failed(self) -> list[Any]:
        return [w for w in self.workers if w.error is not None]


def run_study_parallel(*, gpus: str | list[str], backend: str, workload: str, model: str = "deepseek-v3",
                       tp: int = 1, kv_cache_dtype: str = "auto", objective: str = "per-shape",
                       sampler: str = "auto", n_trials: int | None = None, timeout_s: float | None = None,
                       storage: str | None = None, runner: str = "vllm", seed: int | None = 0, confirm_top: int = 3,
                       confirm_rounds: int = 6, progress: Callable[[Any], None] | None = None) -> ParallelOutcome:
    """``run_study`` with one worker process per GPU (``"0,1,2,3"``), all on one storage; see ``scale``.

    Refuses a busy GPU and, with several workers, a storage unsafe for concurrent writers (SQLite). A failed
    worker is reported in ``workers``, not raised: the others' work is kept and summarized
    (``scale.raise_for_failures`` turns failures into an error). Ctrl-C stops every worker, then propagates.
    """
    from .gpu_lock import parse_gpus
    from .scale import launch
    from .storage import open_storage
    from .summary import summarize

    ids = parse_gpus(gpus if isinstance(gpus, str) else ",".join(gpus))
    study = dict(backend=backend, workload=workload, model=model, tp=tp, kv_cache_dtype=kv_cache_dtype,
                 objective=objective, sampler=sampler, n_trials=n_trials, timeout_s=timeout_s, seed=seed,
                 confirm_top=confirm_top, confirm_rounds=confirm_rounds)
    launched = launch(study, gpus=ids, storage=storage, runner=runner, progress=progress)
    if launched.environment is None:
        return ParallelOutcome(None, launched.workers)
    import optuna

    spec = parse_storage(storage)
    store = open_storage(spec, create=False)
    names = {s.study_name for s in optuna.get_all_study_summaries(store, include_best_trial=False)}
    summaries = [summarize(optuna.load_study(study_name=n, storage=store)) for n in launched.studies if n in names]
    return ParallelOutcome(StudyOutcome(spec.display, launched.environment, summaries, launched.excluded),
                           launched.workers)
