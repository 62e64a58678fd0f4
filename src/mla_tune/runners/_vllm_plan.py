"""Pure planning for the vLLM runner: what a case asks of vLLM, decided without torch or vLLM.

Everything here is plain Python so that the CPU test suite can check the parameter plumbing of every backend
(including the Blackwell-only ones this GPU cannot run) and the parent process can refuse cases without asking
the worker. The facts about vLLM 0.20 that these tables encode are cited next to each table.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..knobs import BACKENDS, PREFILL_BACKENDS, RunnerApply, knobs_for
from ..knobs import check_params
from ..space import SearchSpace
from ..types import Case, MLADims, ParamValue, Request, Status
from ..vllm_adapters import FAMILIES, Adapter, adapter_for, default_adapter, parse_version
from ._timing_policy import PairedPolicy, SamplingPolicy, WarmupPolicy

KV_CACHE_DTYPES = {"auto": "auto", "bfloat16": "auto", "bf16": "auto", "fp8": "fp8", "fp8_e4m3": "fp8"}


@functools.lru_cache(maxsize=1)
def adapter() -> Adapter:
    """The facts of the vLLM this process drives: the installed one (read from package metadata, not imported),
    or vLLM 0.20's where none is installed (the CPU tests plan against it)."""
    return default_adapter()


@dataclass(frozen=True)
class RunnerOptions:
    """Everything the worker needs to know about how to measure; picklable, so it crosses the process pipe."""

    warmup: int = 5  # minimum warm-up calls, and
    warmup_ms: float = 25.0  # minimum warm-up time (more while JIT compiles are still running)
    samples: int = 30  # minimum timed samples, and
    min_time_ms: float = 50.0  # minimum GPU time summed over the samples
    max_samples: int = 400
    drift_tol: float = 0.03  # a recording whose first and last thirds differ more is re-taken ...
    max_retakes: int = 2  # ... up to this often, then kept and marked ``stationary: no``
    pair_min_blocks: int = 10  # a paired recording: at least this many blocks (each arm twice per block), and
    pair_min_time_ms: float = 50.0  # at least this much device time per arm
    pair_max_blocks: int = 300
    layers: int = 8
    timeout_s: float = 30.0
    first_timeout_s: float = 180.0
    warmup_budget_s: float = 90.0
    tol_bf16: float = 2e-2
    tol_fp8: float = 1e-1
    l2_factor: float = 3.0
    mem_fraction: float = 0.5
    device: int = 0
    seed: int = 0
    rebuild_every_trial: bool = False  # bench/overhead.py: the seed's way, for comparison
    log_path: str = ""

    def tolerance(self, kv_cache_dtype: str) -> float:
        return self.tol_fp8 if kv_cache_dtype == "fp8" else self.tol_bf16

    @property
    def warmup_policy(self) -> WarmupPolicy:
        return WarmupPolicy(self.warmup, self.warmup_ms, self.warmup_budget_s)

    @property
    def paired_policy(self) -> PairedPolicy:
        return PairedPolicy(self.pair_min_blocks, self.pair_min_time_ms, max(self.pair_max_blocks, self.pair_min_blocks))

    @property
    def sampling(self) -> SamplingPolicy:
        return SamplingPolicy(self.samples, self.min_time_ms, max(self.max_samples, self.samples), self.drift_tol,
                              self.max_retakes)


@dataclass(frozen=True)
class EngineKey:
    """What a VllmConfig + impl + metadata builder depend on; one engine is built per distinct key."""

    backend: str
    dims: MLADims
    kv_cache_dtype: str  # "auto" or "fp8"
    prefill_backend: str
    cuda_graphs: bool  # the builder reads compilation_config.cudagraph_mode at construction
    # Other engine-level knobs, as the attention-config fields that set them: (field, value), sorted.
    attention: tuple[tuple[str, object], ...] = ()


@dataclass(frozen=True)
class Plan:
    """A case turned into settings: which engine, which builder attributes, which per-call knobs."""

    engine: EngineKey
    threshold: int | None  # the reorder threshold the case asks for; None = the builder's own (fixed) value
    builder: tuple[tuple[str, int], ...]  # metadata-builder attributes the case sets, by vLLM's names (adapter)
    cutlass_splits: int | None  # CutlassMLAImpl._num_kv_splits
    triton_splits: int | None  # forced TRITON_MLA split count; None = vLLM's heuristic
    cuda_graphs: bool
    params: tuple[tuple[str, ParamValue], ...] = field(default=())

    @property
    def metadata_key(self) -> tuple:
        """Builder-side settings: changing one of these builds new metadata, nothing else."""
        return (self.engine, self.threshold, self.builder)


class PlanError(ValueError):
    """A case the runner refuses before measuring; ``status`` says how to report it."""

    def __init__(self, status: Status, message: str) -> None:
        super().__init__(message)
        self.status = status


def capability_refusal(backend: str, compute_capability: str) -> str | None:
    """Why ``backend`` cannot run on a GPU of ``compute_capability`` ("9.0"), or None if it can."""
    return adapter().capability_refusal(backend, compute_capability)


def prefill_capability_refusal(prefill: str, compute_capability: str) -> str | None:
    return adapter().prefill_refusal(prefill, compute_capability)


def prefill_overrides(prefill: str) -> dict[str, object]:
    """The attention-config fields to set for a prefill backend ("auto" = none)."""
    if prefill == "auto":
        return {}
    fields = adapter().prefill_settings.get(prefill)
    if fields is None:
        raise PlanError(Status.ERROR if prefill not in PREFILL_BACKENDS else Status.UNSUPPORTED,
                        f"prefill_backend {prefill!r} does not exist in {adapter().label}; valid: "
                        f"{', '.join(adapter().prefill_available())}")
    return dict(fields)


def resolved_prefill(use_fi: bool, use_cudnn: bool, use_trtllm: bool, fa_version: int | None) -> str:
    """The prefill path MLACommonImpl.__init__ takes, in its own order of preference."""
    if use_trtllm:
        return "trtllm"
    if use_fi:
        return "flashinfer"
    if use_cudnn:
        return "cudnn"
    return f"fa{fa_version}" if fa_version else "fa?"


def prefill_mismatch(requested: str, resolved: str) -> str | None:
    """A reason when vLLM silently runs another prefill path than the one asked for."""
    if requested == "auto" or requested == resolved:
        return None
    return f"prefill_backend={requested} requested but vLLM fell back to {resolved}"


def normalize_kv_dtype(kv_cache_dtype: str) -> str:
    if kv_cache_dtype not in KV_CACHE_DTYPES:
        raise PlanError(Status.ERROR, f"unknown kv_cache_dtype {kv_cache_dtype!r}; valid: "
                        f"{', '.join(sorted(KV_CACHE_DTYPES))}")
    return KV_CACHE_DTYPES[kv_cache_dtype]


def space_of(backend: str, kv_cache_dtype: str = "auto") -> SearchSpace:
    """The backend's search space as the driven vLLM runs it, parsed once per process and family (a YAML parse
    costs ~1 ms, every trial)."""
    return _space_of(adapter().family, backend, kv_cache_dtype)


@functools.lru_cache(maxsize=None)
def _space_of(family: str, backend: str, kv_cache_dtype: str) -> SearchSpace:
    return next(a for a in FAMILIES if a.family == family).search_space(backend, kv_cache_dtype)


def full_params(case: Case) -> dict[str, ParamValue]:
    """The case's parameters, with the ones it leaves out set as vLLM runs them for its shape."""
    params = dict(case.params)
    if case.backend in BACKENDS:
        for name, value in space_of(case.backend, case.kv_cache_dtype).default_config(case.shape).items():
            params.setdefault(name, value)
    return params


def make_plan(case: Case) -> Plan:
    """Validate a case and decide its settings; raises PlanError (ERROR/UNSUPPORTED) when it cannot run."""
    if case.backend not in BACKENDS:
        raise PlanError(Status.ERROR, f"unknown backend {case.backend!r}; valid: {', '.join(BACKENDS)}")
    problems = check_params(case.backend, dict(case.params))
    if problems:
        raise PlanError(Status.ERROR, "; ".join(problems))
    params = full_params(case)
    space = space_of(case.backend, case.kv_cache_dtype)
    cuda_graphs = bool(params.get("cuda_graphs", False))
    threshold = int(params["reorder_batch_threshold"]) if "reorder_batch_threshold" in params else None
    if cuda_graphs and not space.graphable(case.shape, space.threshold(params)):
        raise PlanError(Status.UNSUPPORTED, "cuda_graphs=true for a batch vLLM never replays as a full "
                        "CUDA graph (not a uniform decode batch of at most 512 tokens)")
    splits = params.get("num_kv_splits", "auto")
    engine = EngineKey(case.backend, case.dims, normalize_kv_dtype(case.kv_cache_dtype),
                       str(params.get("prefill_backend", "auto")), cuda_graphs, engine_attention(case.backend, params))
    return Plan(
        engine=engine, threshold=threshold, builder=builder_settings(case.backend, params),
        cutlass_splits=(adapter().cutlass_auto_splits if splits == "auto" else int(splits))
        if case.backend == "CUTLASS_MLA" else None,
        triton_splits=None if splits == "auto" or case.backend != "TRITON_MLA" else int(splits),
        cuda_graphs=cuda_graphs, params=tuple(sorted(params.items())))


def arm_slots(keys: Sequence[EngineKey]) -> list[int]:
    """Which instance of its engine each arm of a paired recording uses: arms with the same ``EngineKey`` get
    instances 0, 1, 2, ... in order, so that no two arms share a metadata builder (nor its persistent buffers)."""
    seen: dict[EngineKey, int] = {}
    out = []
    for k in keys:
        out.append(seen.get(k, 0))
        seen[k] = out[-1] + 1
    return out


def default_case(case: Case) -> Case:
    """The same backend, shape and dims at vLLM's defaults: the numerics reference."""
    return case.with_params(space_of(case.backend, case.kv_cache_dtype).default_config(case.shape))


# Engine-level knobs the EngineKey names itself; any other one reaches the config through its vLLM setting.
_ENGINE_FIELDS = ("prefill_backend", "cuda_graphs")


def engine_attention(backend: str, params: Mapping[str, ParamValue]) -> tuple[tuple[str, object], ...]:
    """The attention-config fields that set the engine-level knobs of ``params`` (beyond prefill and graphs)."""
    out = []
    for k in knobs_for(backend):
        if k.runner is RunnerApply.ENGINE and k.name not in _ENGINE_FIELDS and k.name in params:
            setting = adapter().global_setting(k.name, backend)
            if setting is None or setting.section != "attention_config":
                raise PlanError(Status.UNSUPPORTED, f"{k.name} has no attention-config field in {adapter().label}")
            out.append((setting.key, setting.spell(params[k.name])))
    return tuple(sorted(out))


def impl_attributes(plan: Plan) -> dict[str, object]:
    """Attributes to set on the impl before a call (per-call knobs: no rebuild)."""
    return {"_num_kv_splits": plan.cutlass_splits} if plan.cutlass_splits is not None else {}


def builder_settings(backend: str, params: Mapping[str, ParamValue]) -> tuple[tuple[str, int], ...]:
    """The metadata-builder attributes the builder-side knobs of ``params`` set, by the names vLLM's adapter gives."""
    names = adapter().builder_attrs.get(backend, {})
    return tuple(sorted((names[k.name], int(params[k.name])) for k in knobs_for(backend)
                        if k.runner is RunnerApply.BUILDER and k.name in params and k.name in names))


def builder_attributes(plan: Plan, flags: Mapping[str, bool]) -> dict[str, object]:
    """The builder attributes to set before building metadata: the plan's, except where vLLM would never use the
    value (``Adapter.builder_attr_requires``: the builder's ``flags`` a value needs, e.g. FA3's split cap only under
    full CUDA graphs with its ahead-of-time scheduler); there the builder keeps what its __init__ chose."""
    requires = adapter().builder_attr_requires
    return {attr: value for attr, value in plan.builder if all(flags.get(f, False) for f in requires.get(attr, ()))}


def builder_flags() -> tuple[str, ...]:
    """The builder flags ``builder_attributes`` reads (``Adapter.builder_attr_requires``)."""
    return tuple(sorted({f for fs in adapter().builder_attr_requires.values() for f in fs}))


def order_requests(requests: Sequence[Request], threshold: int) -> tuple[int, ...]:
    """Indices of ``requests`` in the order vLLM's batch reorder puts them (stable within a region).

    reorder_batch_to_split_decodes_and_prefills: decodes (context, q_len <= threshold) first, then long
    extends (context, q_len > threshold), then fresh prefills (no context).
    """
    def region(r: Request) -> int:
        if r.context_len == 0:
            return 2
        return 0 if r.q_len <= threshold else 1

    return tuple(sorted(range(len(requests)), key=lambda i: region(requests[i])))


def choose_layers(cache_bytes: int, l2_bytes: int, free_bytes: int, max_layers: int,
                  l2_factor: float = 3.0, mem_fraction: float = 0.5) -> int:
    """How many distinct KV caches (layers) one timed sample cycles through.

    Enough that they exceed ``l2_factor`` x L2 (so no call finds its cache in L2, as in a real model),
    at most ``max_layers``, at least 1, and no more than ``mem_fraction`` of the free memory holds.
    """
    if cache_bytes <= 0:
        return 1
    want = math.ceil(l2_factor * l2_bytes / cache_bytes)
    fits = int(mem_fraction * free_bytes // cache_bytes)
    return max(1, min(want, max_layers, fits))


def triton_auto_splits(max_seq_len: int, sm_count: int) -> int:
    """The split count TRITON_MLA's heuristic picks (for reporting)."""
    return adapter().triton_auto_splits(max_seq_len, sm_count)


def block_size_for(sizes: Sequence[object], preferred: int = 64) -> int:
    """The KV block size to use from a backend's get_supported_kernel_block_sizes().

    Ints are exact sizes, objects with ``.base`` are MultipleOf(base). ``preferred`` (64, vLLM's usual
    MLA size) wins where allowed; FlashMLA allows only 64, CUTLASS only 128.
    """
    exact = [s for s in sizes if isinstance(s, int)]
    multiples = [int(getattr(s, "base")) for s in sizes if hasattr(s, "base")]
    if preferred in exact or any(preferred % m == 0 for m in multiples):
        return preferred
    if exact:
        return exact[0]
    return multiples[0] if multiples else preferred


def block_counts(requests: Sequence[Request], block_size: int) -> list[int]:
    """KV blocks per request in the runner's cache: every request its own blocks, none shared."""
    return [math.ceil(r.kv_len / block_size) for r in requests]


def kv_offset_refusal(backend: str, requests: Sequence[Request], block_size: int, head_size: int,
                      version: str | None) -> str | None:
    """Why the KV cache this runner builds for ``requests`` (every request its own blocks) is out of reach of the
    installed vLLM's TRITON_MLA decode kernel, or None (see ``Adapter.triton_int32_kv_offsets_through``)."""
    if backend != "TRITON_MLA" or version is None:
        return None
    slots = sum(block_counts(requests, block_size)) * block_size
    return adapter_for(version).triton_kv_offset_refusal(parse_version(version), slots * head_size)


_POISON_MARKERS = ("illegal memory access", "device-side assert", "unspecified launch failure",
                   "illegal instruction", "misaligned address", "cuda error: an illegal",
                   "cudaerrorillegaladdress", "uncorrectable ecc", "context is destroyed",
                   "graph capture failed", "operation not permitted when stream is capturing")
_UNSUPPORTED_MARKERS = ("not supported", "unsupported", "not yet supported", "only supported on",
                        "is not available")


def classify_failure(type_names: Sequence[str], message: str) -> tuple[Status, bool]:
    """(status, poisoned) for an exception, given the names of its class and bases and its message.

    ``poisoned`` means the CUDA context is unusable: the worker must exit so that a fresh one starts.
    """
    low = message.lower()
    if any(m in low for m in _POISON_MARKERS):
        return Status.ERROR, True
    if "OutOfMemoryError" in type_names or "out of memory" in low:
        return Status.OOM, False
    if any(n in type_names for n in ("NotImplementedError", "UnsupportedCase", "ImportError")):
        return Status.UNSUPPORTED, False
    if any(m in low for m in _UNSUPPORTED_MARKERS):
        return Status.UNSUPPORTED, False
    return Status.ERROR, False


def parse_runner_arg(arg: str | None) -> dict[str, object]:
    """``--runner vllm:warmup=3,samples=10`` -> constructor options; raises ValueError naming a bad key."""
    if not arg:
        return {}
    allowed = {f: type(getattr(RunnerOptions(), f)) for f in RunnerOptions.__dataclass_fields__
               if f not in ("log_path", "rebuild_every_trial")}
    out: dict[str, object] = {}
    for item in arg.split(","):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in allowed:
            raise ValueError(f"bad vllm runner option {item!r}; use key=value with keys {', '.join(allowed)}")
        try:
            out[key] = allowed[key](value)
        except ValueError:
            raise ValueError(f"vllm runner option {key}={value!r} is not a {allowed[key].__name__}") from None
    return out
