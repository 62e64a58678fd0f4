"""Frozen value types shared by every layer: requests, shapes, MLA dims, cases, measurements, environments."""

from __future__ import annotations

import enum
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Union

from .paths import safe_component

ParamValue = Union[int, str, bool]


@dataclass(frozen=True, order=True)
class Request:
    """One request of a batch: ``q_len`` new tokens attending over ``kv_len`` tokens (context + new)."""

    q_len: int
    kv_len: int

    @property
    def context_len(self) -> int:
        return self.kv_len - self.q_len


@dataclass(frozen=True)
class Shape:
    """A batch of requests, in the order the batch spec gives them."""

    requests: tuple[Request, ...]

    @property
    def num_tokens(self) -> int:
        return sum(r.q_len for r in self.requests)

    @property
    def max_q_len(self) -> int:
        return max(r.q_len for r in self.requests)

    @property
    def max_kv_len(self) -> int:
        return max(r.kv_len for r in self.requests)

    def decode_requests(self, threshold: int) -> tuple[Request, ...]:
        """Requests vLLM sends down the decode pipeline when its reorder threshold is ``threshold``."""
        return tuple(r for r in self.requests if r.q_len <= threshold)

    def prefill_requests(self, threshold: int) -> tuple[Request, ...]:
        return tuple(r for r in self.requests if r.q_len > threshold)


@dataclass(frozen=True)
class MLADims:
    """The attention dimensions one GPU sees: query heads after tensor parallelism, latent ranks, head dims."""

    model: str
    tp: int
    num_q_heads: int
    kv_lora_rank: int
    qk_rope_head_dim: int
    qk_nope_head_dim: int
    v_head_dim: int
    q_lora_rank: int | None = None

    @property
    def head_size(self) -> int:
        """Width of one latent cache entry (the compressed KV plus the rope part)."""
        return self.kv_lora_rank + self.qk_rope_head_dim

    @property
    def label(self) -> str:
        return f"{self.model}-tp{self.tp}"


def dims_dict(dims: MLADims) -> dict[str, Any]:
    """MLA dims as studies, sweeps and tables store them (``model`` in their records)."""
    return {"model": dims.model, "tp": dims.tp, "num_q_heads": dims.num_q_heads,
            "kv_lora_rank": dims.kv_lora_rank, "qk_rope_head_dim": dims.qk_rope_head_dim,
            "qk_nope_head_dim": dims.qk_nope_head_dim, "v_head_dim": dims.v_head_dim,
            "q_lora_rank": dims.q_lora_rank}


def freeze_params(params: Mapping[str, ParamValue]) -> tuple[tuple[str, ParamValue], ...]:
    """Parameters as a sorted tuple, so that cases hash and compare by value."""
    return tuple(sorted(params.items()))


@dataclass(frozen=True)
class Case:
    """What a runner measures: one backend, one batch shape, one setting of the tunable parameters."""

    backend: str
    shape: Shape
    dims: MLADims
    params: tuple[tuple[str, ParamValue], ...] = ()
    kv_cache_dtype: str = "auto"

    @property
    def param_dict(self) -> dict[str, ParamValue]:
        return dict(self.params)

    def with_params(self, params: Mapping[str, ParamValue]) -> Case:
        return Case(self.backend, self.shape, self.dims, freeze_params(params), self.kv_cache_dtype)


class Status(str, enum.Enum):
    """How a measurement ended. Only ``OK`` carries samples; the rest say why in ``message``."""

    OK = "ok"
    UNSUPPORTED = "unsupported"
    OOM = "oom"
    TIMEOUT = "timeout"
    ERROR = "error"


@dataclass(frozen=True)
class Measurement:
    """The outcome of measuring one case: raw per-call latencies in milliseconds, or a failure kept as data."""

    status: Status
    samples_ms: tuple[float, ...] = ()
    message: str = ""
    rel_err: float | None = None
    details: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.status is Status.OK and not self.samples_ms:
            raise ValueError("an ok measurement needs samples")
        if self.status is not Status.OK and not self.message:
            raise ValueError(f"a {self.status.value} measurement needs a message")

    @property
    def ok(self) -> bool:
        return self.status is Status.OK

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def spread(self) -> float:
        """Inter-quartile range over the median: the relative noise of one sample."""
        if len(self.samples_ms) < 4:
            return 0.0
        q1, _, q3 = statistics.quantiles(self.samples_ms, n=4)
        return (q3 - q1) / self.median_ms

    @classmethod
    def failed(cls, status: Status, message: str, **details: str) -> Measurement:
        return cls(status, (), message, None, tuple(sorted(details.items())))


@dataclass(frozen=True)
class PairStat:
    """One arm of a paired recording against its reference arm (vLLM's default), both from the same recording.

    ``speedup`` is the geometric mean over the recording's blocks of reference time / arm time (each block runs every
    arm twice, in mirrored order, so a clock that moves during the block hits both alike); ``ci`` its interval over
    the blocks (95%). ``reference_ms`` is the median of the reference samples it was compared with. A pair composed
    from two separate recordings (a runner that cannot interleave, a sweep recorded before pairing) has
    ``blocks == 0`` and no ``ci``: the ratio of the two medians, as steady as the clock was between them.
    """

    reference_ms: float
    speedup: float
    ci: tuple[float, float] | None = None
    blocks: int = 0

    @property
    def interleaved(self) -> bool:
        return self.blocks > 0

    @property
    def paired_ms(self) -> float:
        """The arm's latency on the reference's scale: what the ratio says it ran in beside the reference."""
        return self.reference_ms / self.speedup


@dataclass(frozen=True)
class PairedMeasurement:
    """Several configs of one shape measured in one recording, sample by sample (``Runner.measure_paired``).

    ``arms[0]`` is the reference (vLLM's default); ``pairs[i]`` compares arm ``i`` with it (``pairs[0]`` the reference
    with itself: speedup 1). An arm that failed has a failed ``Measurement`` and no pair; when the reference fails,
    every arm does (nothing to compare against). ``order`` is the arm of each timed sample in time order (empty for
    a composed recording); ``details`` describe the recording (blocks, GPU seconds, clocks, the share of clock
    readings under a clock event).
    """

    arms: tuple[Measurement, ...]
    pairs: tuple[PairStat | None, ...]
    order: tuple[int, ...] = ()
    details: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if len(self.arms) != len(self.pairs) or not self.arms:
            raise ValueError("a paired measurement needs one pair (or None) per arm, and at least one arm")
        for m, p in zip(self.arms, self.pairs):
            if m.ok != (p is not None):
                raise ValueError("an ok arm has a pair, a failed one has none")

    @property
    def ok(self) -> bool:
        return all(m.ok for m in self.arms)

    @property
    def gpu_s(self) -> float:
        """GPU seconds timed in the recording (0.0 where it does not say)."""
        return float(dict(self.details).get("gpu_s", 0.0))

    @classmethod
    def all_failed(cls, n: int, status: Status, message: str, **details: str) -> PairedMeasurement:
        m = Measurement.failed(status, message, **details)
        return cls((m,) * n, (None,) * n)


def gpu_short_name(name: str) -> str:
    """``NVIDIA H100 80GB HBM3`` -> ``H100``: how studies, profiles, the plugin and picture files name a GPU.

    A safe file-name component (``paths.safe_component``) whatever the name holds, as it becomes part of study
    names and file names: ``NVIDIA ../../x`` is ``x``, never a path."""
    words = [w for w in str(name).replace("NVIDIA", "").split() if w]
    return safe_component(words[0], fallback="GPU", limit=64) if words else "GPU"


@dataclass(frozen=True)
class Environment:
    """Where measurements come from: the GPU, the software versions and the runner (provenance)."""

    runner: str
    gpu_name: str
    compute_capability: str
    sm_count: int
    driver: str = "unknown"
    cuda: str = "unknown"
    torch: str = "unknown"
    vllm: str = "unknown"
    mla_tune: str = "unknown"
    recorded: str | None = None
    extra: tuple[tuple[str, str], ...] = field(default=())

    @property
    def gpu_short(self) -> str:
        """``NVIDIA H100 80GB HBM3`` -> ``H100``: the part of a study name that says which GPU."""
        return gpu_short_name(self.gpu_name)

    @property
    def fingerprint(self) -> str:
        """The GPU part of study names; replayed studies never share names with measured ones."""
        base = self.gpu_short
        return f"{base}-replay" if self.runner == "replay" else base

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "runner": self.runner,
            "gpu": {"name": self.gpu_name, "compute_capability": self.compute_capability,
                    "sm_count": self.sm_count},
            "driver": self.driver, "cuda": self.cuda, "torch": self.torch, "vllm": self.vllm,
            "mla_tune": self.mla_tune,
        }
        if self.recorded:
            d["recorded"] = self.recorded
        if self.extra:
            d["extra"] = dict(self.extra)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Environment:
        gpu = d["gpu"]
        return cls(runner=d["runner"], gpu_name=gpu["name"],
                   compute_capability=str(gpu["compute_capability"]), sm_count=int(gpu["sm_count"]),
                   driver=str(d.get("driver", "unknown")), cuda=str(d.get("cuda", "unknown")),
                   torch=str(d.get("torch", "unknown")), vllm=str(d.get("vllm", "unknown")),
                   mla_tune=str(d.get("mla_tune", "unknown")), recorded=d.get("recorded"),
                   extra=tuple(sorted((str(k), str(v)) for k, v in (d.get("extra") or {}).items())))


@dataclass(frozen=True)
class EngineMatch:
    """An engine as a serving profile names it, and as the plugin sees a running one: the profile is applied only
    where the two agree. ``gpu`` is the short name (H100, H200); ``vllm`` the adapter family ("0.20")."""

    gpu: str
    compute_capability: str
    backend: str
    num_q_heads: int  # per GPU (after tensor parallelism)
    kv_lora_rank: int
    qk_rope_head_dim: int
    kv_cache_dtype: str  # "auto" (the model dtype) or "fp8"
    vllm: str  # adapter family, e.g. "0.20"


@dataclass(frozen=True)
class BackendStatus:
    """Whether a decode or prefill backend can run with this runner, and if not, why."""

    name: str
    kind: str  # "decode" or "prefill"
    available: bool
    reason: str = ""
