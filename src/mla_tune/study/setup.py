"""Before a study runs: validate its request, open its runner, lock its GPU, and refuse what cannot run here
(a backend or shape the runner cannot answer, prefill kernels it lacks, a stored study made another way).

Shared by the single-process API, the multi-GPU launcher and its workers, which import it from below ``api``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

from ..errors import RunnerUnavailableError, UnknownNameError, UsageError
from ..models import get_model
from ..runners import Runner, make_runner
from ..space import BACKENDS, SearchSpace, load_space
from ..space_auto import AUTO, AnySpace, AutoSpace, split_config, unsettled
from ..types import Case, freeze_params
from ..vllm_adapters import Adapter, UnsupportedVllmError, adapter_for, default_adapter, recorded_adapter
from ..workloads import get_workload
from .plan import KV_CACHE_DTYPES, OBJECTIVES, StudyRequest
from .sampling import SAMPLERS

# vLLM MLA backends that are known but deliberately not searched, and why (an "unknown backend" would mislead).
NOT_TUNED = {
    "FLASHMLA_SPARSE": "DeepSeek-V3.2's sparse attention reads the indexer's top-k token indices, which no "
                       "workload here models (every workload is dense MLA)",
}


def check_tunable(backend: str) -> None:
    """Refuse a backend that is deliberately not tuned (saying why) or unknown (listing the valid ones)."""
    if backend == AUTO:
        return
    if backend in NOT_TUNED:
        raise UsageError(f"backend {backend} is not tuned by mla-tune: {NOT_TUNED[backend]}",
                         hint=f"tunable backends: {', '.join(sorted(BACKENDS))}")
    if backend not in BACKENDS:
        raise UnknownNameError("backend", backend, (*BACKENDS, AUTO))


def build_request(*, backend: str, workload: str, model: str = "deepseek-v3", tp: int = 1,
                  kv_cache_dtype: str = "auto", objective: str = "per-shape", sampler: str = "auto",
                  n_trials: int | None = None, timeout_s: float | None = None, seed: int | None = 0,
                  confirm_top: int = 3, confirm_rounds: int = 6, confirm_max_rounds: int | None = None
                  ) -> tuple[StudyRequest, AnySpace]:
    """Validate every name and number of a study request; nothing is opened or written."""
    check_tunable(backend)
    if sampler not in SAMPLERS:
        raise UnknownNameError("sampler", sampler, SAMPLERS)
    if objective not in OBJECTIVES:
        raise UnknownNameError("objective", objective, OBJECTIVES)
    if kv_cache_dtype not in KV_CACHE_DTYPES:
        raise UnknownNameError("kv-cache dtype", kv_cache_dtype, KV_CACHE_DTYPES)
    if n_trials is not None and n_trials < 1:
        raise UsageError(f"--trials must be at least 1, got {n_trials}")
    if timeout_s is not None and not (math.isfinite(timeout_s) and timeout_s > 0):
        raise UsageError(f"--timeout must be a positive number of seconds, got {timeout_s}")
    if seed is not None and not 0 <= seed < 2**32:
        raise UsageError(f"--seed must be in 0..{2**32 - 1}, got {seed}")
    if confirm_top < 1:
        raise UsageError(f"confirmation needs at least 1 candidate, got {confirm_top}")
    if confirm_rounds < 2:
        raise UsageError(f"confirmation needs at least 2 rounds, got {confirm_rounds}")
    if confirm_max_rounds is not None and confirm_max_rounds < confirm_rounds:
        raise UsageError(f"--confirm-max-rounds ({confirm_max_rounds}) must be at least --confirm-rounds "
                         f"({confirm_rounds})")
    # knobs that matter only with an fp8 cache see it; auto: every backend until a runner says which run (settle_auto).
    # Graphs as the installed vLLM runs them until a runner says which vLLM it measures with (as_measured).
    graphs = _provisional_adapter().graph_support
    space = unsettled(graphs, kv_cache_dtype) if backend == AUTO else \
        load_space(backend, graphs(backend)).for_kv(kv_cache_dtype)
    wl = get_workload(workload)
    dims = get_model(model, tp)
    return StudyRequest(backend, wl, dims, kv_cache_dtype, objective, sampler, n_trials, timeout_s, seed,
                        confirm_top, confirm_rounds, confirm_max_rounds), space


def _provisional_adapter() -> Adapter:
    """The installed vLLM's family (0.20's where none or an unsupported one is installed: a replay runner may
    still run there, and names the vLLM of its recordings once opened)."""
    try:
        return default_adapter()
    except UnsupportedVllmError:
        return recorded_adapter(None)


def as_measured(space: AnySpace, runner: Runner) -> AnySpace:
    """``space`` under the CUDA graph support of the vLLM ``runner`` measures with (a replay: the recorded one's),
    so that ``cuda_graphs`` is searched exactly where that vLLM replays the backend in full graphs."""
    graphs = recorded_adapter(runner.environment().vllm).graph_support
    if isinstance(space, AutoSpace):
        return space.under_graphs(graphs)
    return space.under_graphs(graphs(space.backend))


def build_requests(*, backend: str | Sequence[str], workload: str | Sequence[str], tp: int | Sequence[int] = 1,
                   **rest: Any) -> list[tuple[StudyRequest, AnySpace]]:
    """``build_request`` for every backend x TP x workload given (each a value or a list), in that order: a
    backend's studies together, a TP's before the next, so that each study can warm-start from the ones before it.
    Every name and number is checked before any is used; repeats are dropped."""
    backends, workloads, tps = _listed(backend, "backend"), _listed(workload, "workload"), _listed(tp, "tp")
    out: list[tuple[StudyRequest, AnySpace]] = []
    for b in dict.fromkeys(backends):
        for t in dict.fromkeys(tps):
            for w in dict.fromkeys(workloads):
                out.append(build_request(backend=b, workload=w, tp=t, **rest))
    return out


def _listed(value: Any, what: str) -> list[Any]:
    values = [value] if isinstance(value, (str, int)) else list(value)
    if not values:
        raise UsageError(f"a study needs at least one {what}", hint=f"give --{what}")
    return values


@contextlib.contextmanager
def gpu_locked(runner: Runner) -> Iterator[None]:
    """Hold the runner's GPU for this process: a second measuring process on it would corrupt both timings."""
    if runner.gpu is None:
        yield
        return
    from ..coordination.gpu_lock import acquire

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
    st = runner.backend_status(backend, "decode")
    if not st.available:
        raise RunnerUnavailableError(f"{backend} cannot run here: {st.reason}",
                                     hint="`mla-tune backends` lists what can")


def preflight(runner: Runner, request: StudyRequest, space: AnySpace) -> None:
    """Refuse before anything is written: a backend that cannot run here, or shapes the runner cannot answer
    (e.g. a replay of shapes, TP or model dims that were never recorded). ``auto``: vLLM's own choice must run."""
    space = as_measured(space, runner)
    if isinstance(space, AutoSpace):
        space, _ = settle_auto(runner, request, space)
    else:
        require_backend(runner, request.backend)
    for ws in request.workload.shapes:
        why = runner.unanswerable(_default_case(request, space, ws.shape))
        if why:
            raise RunnerUnavailableError(why, hint="record it with `mla-tune sweep` on a GPU, or pick a recorded "
                                                   "workload, --tp and --model")


def _default_case(request: StudyRequest, space: AnySpace, shape: Any) -> Case:
    backend, params = split_config(request.backend, space.default_config(shape))
    return Case(backend, shape, request.dims, freeze_params(params), request.kv_cache_dtype)


def settle_auto(runner: Runner, request: StudyRequest, space: AutoSpace) -> tuple[AutoSpace, dict[str, str]]:
    """``--backend auto`` here: the decode backends that run (with every shape answerable: a backend that cannot
    is simply not a choice, its reason kept), vLLM's own choice the default. Refused when vLLM's choice cannot run:
    the baseline every config is judged against would be missing."""
    default = runner.default_backend(request.kv_cache_dtype)
    env = runner.environment()
    if default is None:
        raise RunnerUnavailableError(f"--backend auto: vLLM {env.vllm} picks no MLA decode backend on "
                                     f"{env.gpu_name} (SM {env.compute_capability})",
                                     hint="tune a backend by name; `mla-tune backends` lists what can run")
    adapter = adapter_for(env.vllm)
    keep, excluded = [], {}
    for m in space.members:
        why = _cannot_run(runner, request, m, adapter)
        if why:
            excluded[m.backend] = why
        else:
            keep.append(m.backend)
    if default not in keep:
        raise RunnerUnavailableError(f"--backend auto: {default}, the backend vLLM picks here, cannot run: "
                                     f"{excluded.get(default, 'not a tuned backend')}",
                                     hint="tune the backends that can run by name (--backend NAME); "
                                          "`mla-tune backends` lists them")
    return space.settled(tuple(keep), default), excluded


def _cannot_run(runner: Runner, request: StudyRequest, space: SearchSpace, adapter: Any) -> str:
    """Why ``space``'s backend is no choice here ('' if it is one): the runner lacks it, this vLLM does not run it
    with this KV cache dtype, or a shape of the request cannot be answered with its defaults."""
    st = runner.backend_status(space.backend, "decode")
    if not st.available:
        return st.reason
    facts = adapter.backend(space.backend)
    if facts is not None and not facts.fp8_kv and request.kv_cache_dtype.startswith("fp8"):
        return f"{space.backend} takes no fp8 KV cache in {adapter.label}"
    for ws in request.workload.shapes:
        why = runner.unanswerable(Case(space.backend, ws.shape, request.dims,
                                       freeze_params(space.default_config(ws.shape)), request.kv_cache_dtype))
        if why:
            return why
    return ""


def check_space_available(space: AnySpace, runner: Runner, request: StudyRequest | None = None
                          ) -> tuple[AnySpace, dict[str, str]]:
    """Drop prefill backends the runner cannot run here (trials spent on them would only fail); ``auto`` (which
    needs its ``request``): the decode backends too (``settle_auto``), and each one's prefill backends. The space
    is first put under the runner's vLLM's graph support (``as_measured``)."""
    space = as_measured(space, runner)
    if isinstance(space, AutoSpace):
        if request is None:
            raise ValueError("an auto space is settled for a request")
        space, excluded = settle_auto(runner, request, space)
        members = []
        for m in space.members:
            m, left_out = check_space_available(m, runner)
            members.append(m)
            excluded.update(left_out)
        return space.with_members(tuple(members)), excluded
    if "prefill_backend" not in space:
        return space, {}
    excluded: dict[str, str] = {}
    allowed = []
    for value in space["prefill_backend"].values():
        if value == "auto":
            allowed.append(value)
            continue
        st = runner.backend_status(str(value), "prefill")
        if st.available:
            allowed.append(value)
        else:
            excluded[str(value)] = st.reason
    return space.restrict("prefill_backend", allowed), excluded


_SAME_ENV = ("runner", "gpu", "driver", "cuda", "torch", "vllm")


def check_same_source(name: str, existing: dict, new: dict) -> None:
    """A resumed study must measure the same thing the same way: same space, shapes and software (its stored
    ``plan.study_attrs`` against this run's)."""
    if existing.get("schema_version") != new["schema_version"]:
        raise UsageError(f"study {name} was made by an mla-tune whose trials were separate recordings in ms; this one "
                         "records every trial against vLLM's default, and the two cannot share a study",
                         hint="use another --storage (the old study stays readable: show, export)")
    if existing.get("space") != new["space"]:
        was = ((existing.get("space") or {}).get("backend") or {}).get("values")
        now = ((new.get("space") or {}).get("backend") or {}).get("values")
        if was != now:  # --backend auto: which decode backends run here changed (a GPU, a vLLM, a kernel package)
            raise UsageError(f"study {name} chose among the decode backends {', '.join(map(str, was or []))}; "
                             f"here {', '.join(map(str, now or []))} can run",
                             hint="run it where the same backends run, or use another --storage")
        raise UsageError(f"study {name} was made with a different search space",
                         hint="restore the YAML, or use another --storage for the new space")
    def shapes(attrs: dict) -> Any:  # a per-shape study's value is its one shape's: a weight changes nothing
        listed = attrs.get("shapes") or []
        return [s.get("spec") for s in listed] if attrs.get("objective") == "per-shape" else listed

    if shapes(existing) != shapes(new):
        raise UsageError(f"study {name} was made with different workload shapes or weights",
                         hint="restore workloads.yaml, or use another --storage")
    old_env, env = existing.get("environment", {}), new["environment"]
    for key in _SAME_ENV:
        if old_env.get(key) != env.get(key):
            raise UsageError(f"study {name} was measured with {key} {_show(old_env.get(key))}; "
                             f"this run has {_show(env.get(key))}", hint="use another --storage for the new setup")


def _show(value: Any) -> str:
    return value.get("name", str(value)) if isinstance(value, dict) else str(value)


__all__ = ["NOT_TUNED", "as_measured", "build_request", "build_requests", "check_same_source",
           "check_space_available", "check_tunable", "gpu_locked", "open_runner", "preflight", "require_backend", "settle_auto"]
