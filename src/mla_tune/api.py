"""The public API: what the CLI calls and what users script. Never prints; raises ``MlaTuneError``s."""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import RunnerUnavailableError, StudyNotFoundError, UnknownNameError, UsageError
from .catalog import list_models, list_spaces, list_workloads  # the listings, without Optuna
from .models import get_model
from .paths import safe_component
from .records import StudyName
from .runners import Runner
from .space import BACKENDS
from .space_auto import AUTO
from .storage.urls import parse_storage
from .study.setup import (NOT_TUNED, build_request, build_requests, check_tunable, gpu_locked, open_runner,
                          preflight, require_backend)
from .tables.summary import StudySummary
from .sweep import DEFAULT_ROUNDS
from .types import BackendStatus, Environment, gpu_short_name
from .workloads import Workload, get_workload


@dataclass(frozen=True)
class StudyOutcome:
    storage: str
    environment: Environment
    summaries: list[StudySummary]
    excluded: dict[str, str] = field(default_factory=dict)  # prefill backends left out here, with reasons


def run_study(*, backend: str | Sequence[str], workload: str | Sequence[str], model: str = "deepseek-v3",
              tp: int | Sequence[int] = 1, kv_cache_dtype: str = "auto", objective: str = "per-shape",
              sampler: str = "auto", n_trials: int | None = None, timeout_s: float | None = None,
              storage: str | None = None, runner: str | Runner = "vllm", seed: int | None = 0, confirm_top: int = 3,
              confirm_rounds: int = 6, confirm_max_rounds: int | None = None,
              progress: Callable[[Any], None] | None = None) -> StudyOutcome:
    """Run (or resume) the studies of one or several backends, workloads and TPs, confirm their winners, and
    summarize them. Several go through one runner (vLLM imported, its worker started and the GPU locked once), a
    backend at a time, TP by TP, workload by workload (``study.setup.build_requests``).

    Order matters for "bad input writes nothing": names are validated, the runner is made and asked whether
    every backend and shape runs here, and only then is the storage opened (created) and a study written.

    Ctrl-C and SIGTERM stop it at the next measurement or wait (``interrupts``) with nothing left RUNNING or
    WAITING; a study that ends with a config it needs unmeasured raises ``StudyIncompleteError`` saying why,
    after the others are confirmed.
    """
    from .coordination.interrupts import handled
    from .study.loop import Solo, run_studies
    from .tables.summary import summaries_of

    requests = build_requests(backend=backend, workload=workload, model=model, tp=tp,
                              kv_cache_dtype=kv_cache_dtype, objective=objective, sampler=sampler,
                              n_trials=n_trials, timeout_s=timeout_s, seed=seed, confirm_top=confirm_top,
                              confirm_rounds=confirm_rounds, confirm_max_rounds=confirm_max_rounds)
    spec = parse_storage(storage)
    with open_runner(runner) as r, gpu_locked(r):
        with handled():
            ran = run_studies(r, requests, spec, Solo(), progress)
        summaries = summaries_of(ran.storage, [t.name for t in ran.targets])
    return StudyOutcome(spec.display, ran.environment, summaries, ran.excluded)


def find_studies(*, storage: str | None = None, backend: str | None = None, model: str | None = None,
                 tp: int | None = None, kv_cache_dtype: str | None = None, workload: str | None = None,
                 gpu: str | None = None) -> list[StudySummary]:
    """Summaries of the stored studies that match every filter given."""
    from .storage.urls import open_storage
    from .tables.summary import load_summaries

    if backend and backend not in BACKENDS and backend != AUTO:
        raise UnknownNameError("backend", backend, (*BACKENDS, AUTO))
    store = open_storage(parse_storage(storage), create=False)
    wl: Workload | None = get_workload(workload) if workload else None

    def keep(text: str, a: dict[str, Any]) -> bool:
        name = StudyName.parse(text)
        return not ((backend and a.get("backend") != backend)
                    or (model and a.get("model", {}).get("model") != model)
                    or (tp is not None and a.get("model", {}).get("tp") != tp)
                    or (kv_cache_dtype and a.get("kv_cache_dtype") != kv_cache_dtype)
                    or (gpu and name.gpu != gpu)
                    or (wl and name.label not in wl.specs and name.label != f"mix:{wl.name}"))

    return load_summaries(store, keep)


def export_table(output: Path, *, storage: str | None = None, backend: str, model: str = "deepseek-v3",
                 tp: int = 1, kv_cache_dtype: str = "auto", workload: str | None = None,
                 gpu: str | None = None, names: Collection[str] | None = None) -> tuple[Path, dict[str, Any]]:
    """Write the tuning table of the matching studies to ``output`` (atomically); returns it too. ``names``
    narrows them to those studies (what one `study` call ran, whatever else the storage holds)."""
    from .tables.export import write_table
    from .tables.table import build_table

    check_tunable(backend)
    get_model(model, tp)
    found = find_studies(storage=storage, backend=backend, model=model, tp=tp, kv_cache_dtype=kv_cache_dtype,
                         workload=workload, gpu=gpu)
    if names is not None:
        found = [s for s in found if s.name in set(names)]
    if not found:
        raise StudyNotFoundError(f"no {backend} studies for {model} tp{tp} (kv {kv_cache_dtype})"
                                 + (f" and workload {workload}" if workload else "") + " in this storage",
                                 hint="`mla-tune show` lists the stored studies")
    gpus = sorted({StudyName.parse(s.name).gpu for s in found})
    if len(gpus) > 1:
        raise UsageError(f"studies from several GPUs match: {', '.join(gpus)}", hint="pick one with --gpu")
    for s in found:  # a confirmation speaks for the configs measured when it ran, not for those measured since
        confirmed_at = s.confirmed.trials if s.confirmed is not None else s.measured
        if confirmed_at != s.measured:
            from .study.confirm import StudyIncompleteError

            raise StudyIncompleteError(f"{s.name}: {s.measured} configs measured, but confirmed when {confirmed_at} "
                                       "were: the table would not be true", hint="run the same `mla-tune study` "
                                       "again to confirm it, then export")
    if workload:  # keep the workload's own order
        order = {spec: i for i, spec in enumerate(get_workload(workload).specs)}
        found.sort(key=lambda s: order.get(s.label, len(order)))
    table = build_table(found)
    return write_table(table, output), table


def list_backends(runner: str | Runner = "vllm") -> tuple[Environment, tuple[BackendStatus, ...]]:
    with open_runner(runner) as r:
        return r.environment(), r.backends()


def run_sweep(*, backend: str | Sequence[str], workload: str | Sequence[str], output: Path,
              model: str = "deepseek-v3", tp: int = 1, kv_cache_dtype: str = "auto", runner: str | Runner = "vllm",
              progress: Callable[[Any], None] | None = None, rounds: int = DEFAULT_ROUNDS, seed: int = 0) -> int:
    """Record an exhaustive sweep (all raw samples, ``rounds`` interleaved recordings per config) for the replay
    runner; resumes an interrupted file. Several backends and workloads go into one file from one runner, so
    vLLM is imported and its worker started once.

    Ctrl-C and SIGTERM stop it inside a measurement only, never while a line is written."""
    from .coordination.interrupts import handled
    from .study.trials import check_space_available
    from .study.loop import Interruptible
    from .sweep import run_sweep as _run

    backends = [backend] if isinstance(backend, str) else list(backend)
    workloads = [workload] if isinstance(workload, str) else list(workload)
    if not backends or not workloads:
        raise UsageError("a sweep needs at least one backend and one workload")
    if AUTO in backends:  # a recording is of one backend; an auto study replays each backend's
        raise UsageError("a sweep records named backends, not auto", hint="give each --backend to record by name")
    if not 1 <= rounds <= 100:
        raise UsageError(f"--rounds {rounds} is out of range: 1 to 100")
    requests = [(b, *build_request(backend=b, workload=w, model=model, tp=tp, kv_cache_dtype=kv_cache_dtype))
                for b in backends for w in workloads]  # every name checked before the GPU is touched
    written = 0
    with open_runner(runner) as r, gpu_locked(r):
        if r.name == "replay":
            raise UsageError("a sweep records measurements; the replay runner would only copy a recording",
                             hint="sweep with --runner vllm on a GPU")
        for b in backends:
            require_backend(r, b)
        with handled():
            for b, request, space in requests:
                space, _ = check_space_available(space, r)
                written += _run(Interruptible(r), space, request.workload, request.dims, kv_cache_dtype,
                                Path(output), progress, rounds, seed)
    return written


@dataclass(frozen=True)
class ParallelOutcome:
    """What ``run_study_parallel`` returns: the studies' outcome (None if no worker finished) and every worker."""

    outcome: StudyOutcome | None
    workers: list[Any]  # scale.WorkerReport, one per GPU

    @property
    def failed(self) -> list[Any]:
        return [w for w in self.workers if w.error is not None]


def run_study_parallel(*, gpus: str | list[str], backend: str | Sequence[str], workload: str | Sequence[str],
                       model: str = "deepseek-v3", tp: int | Sequence[int] = 1, kv_cache_dtype: str = "auto",
                       objective: str = "per-shape",
                       sampler: str = "auto", n_trials: int | None = None, timeout_s: float | None = None,
                       storage: str | None = None, runner: str = "vllm", seed: int | None = 0, confirm_top: int = 3,
                       confirm_rounds: int = 6, confirm_max_rounds: int | None = None,
                       progress: Callable[[Any], None] | None = None) -> ParallelOutcome:
    """``run_study`` with one worker process per GPU (``"0,1,2,3"``), all on one storage; see ``scale``. Each
    worker runs every study of the backends, workloads and TPs given, through one runner.

    Refuses a busy GPU and, with several workers, a storage unsafe for concurrent writers (SQLite). A failed
    worker is reported in ``workers``, not raised: the others' work is kept and summarized
    (``scale.raise_for_failures`` turns failures into an error). Ctrl-C stops every worker, then propagates.
    """
    from .coordination.gpu_lock import parse_gpus
    from .parallel.scale import launch
    from .storage.urls import open_storage
    from .tables.summary import summaries_of

    ids = parse_gpus(gpus if isinstance(gpus, str) else ",".join(gpus))
    def listed(x: Any) -> Any:  # JSON for the workers' job files
        return x if isinstance(x, (str, int)) else list(x)

    study = dict(backend=listed(backend), workload=listed(workload), model=model, tp=listed(tp),
                 kv_cache_dtype=kv_cache_dtype,
                 objective=objective, sampler=sampler, n_trials=n_trials, timeout_s=timeout_s, seed=seed,
                 confirm_top=confirm_top, confirm_rounds=confirm_rounds, confirm_max_rounds=confirm_max_rounds)
    launched = launch(study, gpus=ids, storage=storage, runner=runner, progress=progress)
    if launched.environment is None:
        return ParallelOutcome(None, launched.workers)
    spec = parse_storage(storage)
    summaries = summaries_of(open_storage(spec, create=False), launched.studies)
    return ParallelOutcome(StudyOutcome(spec.display, launched.environment, summaries, launched.excluded),
                           launched.workers)


# Re-exported: the request checks and runner helpers are the public API's too.
__all__ = ["NOT_TUNED", "ParallelOutcome", "StudyOutcome", "build_request", "export_table", "find_studies",
           "gpu_locked", "list_backends", "list_models", "list_spaces", "list_workloads", "open_runner", "preflight",
           "require_backend", "run_study", "run_study_parallel", "run_sweep"]


def deploy_profile(tables: list[Path], output: Path, *, traffic: Path | None = None, workload: str | None = None,
                   vllm: str | None = None) -> Any:
    """Tables (+ traffic) -> a serving profile written atomically to ``output``; returns the ``Deployment``."""
    from .tables.export import dump_yaml, load_table, write_atomic
    from .serving import deploy
    from .traffic import load_traffic, workload_traffic

    if traffic is not None and workload is not None:
        raise UsageError("give --traffic or --workload, not both")
    if vllm is None:
        from .vllm_adapters import installed_version

        vllm = installed_version()
    loaded = [load_table(t) for t in tables]
    flow = load_traffic(traffic) if traffic else workload_traffic(workload) if workload else None
    result = deploy(loaded, flow, vllm)
    write_atomic(output, PROFILE_HEADER + dump_yaml(result.profile.to_dict()))
    return result


PROFILE_HEADER = ("# mla-tune serving profile: applied by mla-tune's vLLM plugin when MLA_TUNE_PROFILE points here.\n"
                  "# Written by `mla-tune deploy`; the plugin refuses it on another GPU, model, backend or vLLM.\n")


@dataclass(frozen=True)
class Verification:
    target: str
    kind: str  # "table" | "profile"
    measured_on: str  # where the target's numbers came from
    environment: Environment  # where they were re-measured now
    results: list[Any]

    @property
    def slower(self) -> list[Any]:
        return [r for r in self.results if r.verdict == "slower"]

    @property
    def failed(self) -> list[Any]:
        return [r for r in self.results if r.verdict == "failed"]


RECORDINGS = Path("results/sweeps")  # the recorded sweeps of a clone, one folder per GPU (h100, h200)
_REPLAY_HINT = re.compile(r",? or use --runner replay:\S+")


@contextmanager
def replay_hint_for(gpu: str) -> Iterator[None]:
    """A runner that cannot start here suggests replaying recordings: name those of ``gpu`` (what is verified was
    measured there), or say there are none, instead of another GPU's."""
    try:
        yield
    except RunnerUnavailableError as e:
        if not e.hint or not _REPLAY_HINT.search(e.hint):
            raise
        own = RECORDINGS / safe_component(gpu.lower(), fallback="gpu")  # the name comes from the file verified
        instead = (f", or replay the {gpu}'s recordings: --runner replay:{own}" if own.is_dir() else
                   f"; no {gpu} recordings in {RECORDINGS} to replay")
        raise RunnerUnavailableError(e.message, hint=_REPLAY_HINT.sub(lambda _: instead, e.hint)) from None


def _check_verify_rounds(rounds: int, max_rounds: int, limit: int) -> None:
    """Rounds are device time: both bounds in ``[2, limit]``, and the least no more than the most."""
    if rounds < 2:
        raise UsageError(f"--rounds {rounds}: need at least 2 paired rounds for an interval")
    if rounds > limit:
        raise UsageError(f"--rounds {rounds} is out of range: 2 to {limit} (each round is a recording on the GPU)")
    if not 2 <= max_rounds <= limit:
        raise UsageError(f"--max-rounds {max_rounds} is out of range: 2 to {limit}")
    if rounds > max_rounds:
        raise UsageError(f"--rounds {rounds} is above --max-rounds {max_rounds}",
                         hint=f"raise --max-rounds (at most {limit}) or lower --rounds")


def verify_target(path: Path, *, runner: str | Runner = "vllm", rounds: int = 4, max_rounds: int = 24,
                  progress: Callable[[str], None] | None = None) -> Verification:
    """Re-measure each tuned setting of a table or profile against vLLM's default on this host: paired rounds,
    at least ``rounds``, more (up to ``max_rounds``) while the default-against-itself floor is wider than ±0.5%."""
    from . import _yaml
    from .tables.export import load_table
    from .serving import load_profile
    from .serving.profile import PROFILE_KIND
    from .tables.table import SCHEMA_VERSIONS
    from .serving.verify import item_backends, profile_dims, profile_items, table_dims, table_items, verify

    from .serving.verify import MAX_ROUNDS_LIMIT

    _check_verify_rounds(rounds, max_rounds, MAX_ROUNDS_LIMIT)
    if _yaml.load(path, SCHEMA_VERSIONS).get("kind") == PROFILE_KIND:
        profile = load_profile(path)
        kind, backend, kv = "profile", profile.match.backend, profile.match.kv_cache_dtype
        items, dims = profile_items(profile), profile_dims(profile)
        source = "; ".join(profile.provenance.get("measured_with") or [profile.match.gpu])
        gpu = profile.match.gpu
    else:
        table = load_table(path)
        kind, backend, kv = "table", table["backend"], table["kv_cache_dtype"]
        items, dims = table_items(table), table_dims(table)
        prov = table["provenance"]
        source = f"{prov['gpu']['name']}, vLLM {prov.get('vllm')}, runner {prov.get('runner')}"
        gpu = gpu_short_name(str(prov["gpu"]["name"]))
    with replay_hint_for(gpu), open_runner(runner) as r:
        for b in item_backends(backend, items):  # auto: vLLM's default backend and every one a config chose
            require_backend(r, b)
        with gpu_locked(r):
            results = verify(items, r, backend, dims, kv, rounds, max_rounds, progress)
        return Verification(str(path), kind, source, r.environment(), results)


def bench_serve_plan(profile: Path, model: str, server_args: list[str] | tuple[str, ...] = (), *,
                     traffic: Path | None = None, **options: Any) -> Any:
    """The ``prove.plan.BenchPlan`` of a bench-serve: every argument checked, nothing started (``--dry-run``)."""
    from .prove.plan import make_plan
    from .traffic import load_traffic

    return make_plan(profile, model, server_args, traffic=load_traffic(traffic) if traffic else None, **options)


def bench_serve(plan: Any, output: Path, *, progress: Callable[[str], None] | None = None,
                server_timeout_s: float = 900.0, client_timeout_s: float = 7200.0) -> Any:
    """Run ``plan`` (``bench_serve_plan``) into ``output``: vLLM's result per run, ``summary.json``, ``summary.txt``
    and ``ratios.png`` (where matplotlib is installed); returns the ``prove.summary.Summary``. What completed is kept
    whatever stops it, and the same plan into the same folder runs only what is missing."""
    from .errors import UsageError
    from .prove.bench import Timeouts, run_bench
    from .tables.export import write_atomic
    from .views.plots import write_bytes_atomic
    from .views.render_prove import ratios_png, summary_text

    if not (server_timeout_s > 0 and client_timeout_s > 0):
        raise UsageError("timeouts must be positive numbers of seconds")
    summary = run_bench(plan, Path(output), progress or (lambda _: None),
                        timeouts=Timeouts(server_timeout_s, client_timeout_s))
    write_atomic(Path(output) / "summary.txt", summary_text(summary))
    try:
        png = ratios_png(summary)
    except UsageError as e:  # no matplotlib: the numbers stand without their picture
        (progress or (lambda _: None))(f"no plot: {e}")
    else:
        write_bytes_atomic(Path(output) / "ratios.png", png)
    return summary

