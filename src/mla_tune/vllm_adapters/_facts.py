"""The record of one vLLM version family's facts: what mla-tune must know to drive and to patch that vLLM.

Pure data, no vLLM import: the CPU tests check every family's facts, ``flags``/``deploy`` print settings for a
version that is not installed, and the plugin decides what to patch before touching vLLM. The code that acts
on these facts inside a running vLLM (``runners._vllm_engine``, ``_patches``) reads names from here, never spells them.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..knobs import PREFILL_BACKENDS
from ..space import SearchSpace, load_space


@dataclass(frozen=True)
class BackendFacts:
    """One decode backend as a vLLM family has it."""

    name: str
    capability_majors: tuple[int, ...] | None  # None: any CUDA GPU
    cuda_graph_support: str  # AttentionCGSupport level: never | uniform_single_token_decode | uniform_batch | always
    builder_class: str  # "module:Class" of its metadata builder
    impl_class: str  # "module:Class" of its impl
    fp8_kv: bool = True  # runs with an fp8 KV cache (its supported_kv_cache_dtypes list fp8)


@dataclass(frozen=True)
class GlobalSetting:
    """A vLLM setting that holds one value for the whole deployment."""

    section: str  # "attention_config" | "compilation_config" | "env"
    key: str  # the field or variable name
    # Values of the knob that have no spelling here (e.g. "auto" needs no setting at all).
    skip: tuple[object, ...] = ()
    # How a knob value is spelled in the setting, where not as itself (cuda_graphs True -> "FULL_AND_PIECEWISE").
    spelled: tuple[tuple[object, object], ...] = ()

    def spell(self, value: object) -> object:
        return dict(self.spelled).get(value, value)


@dataclass(frozen=True)
class TritonKernelCall:
    """Where TRITON_MLA's split count reaches its decode kernel: ``module.function(*args)`` with the scratch
    buffer and the split count at these positions (or keywords)."""

    module: str
    function: str
    logits_arg: int
    logits_kw: str
    splits_arg: int
    splits_kw: str


@dataclass(frozen=True)
class Adapter:
    family: str  # "0.21-0.25"
    first: tuple[int, int]  # oldest minor covered, e.g. (0, 20)
    last: tuple[int, int]  # newest minor covered
    torch: str  # the torch the family's wheels are built for
    gpu_validated: str  # what ran on a GPU with this family, or "" (written from the released source only)
    backends: Mapping[str, BackendFacts]
    # prefill knob value -> attention-config fields that select it; values absent here do not exist
    prefill_settings: Mapping[str, Mapping[str, object]]
    prefill_needs_sm100: tuple[str, ...]
    # knob -> the vLLM setting that holds one global value of it, per backend ("*" = every backend)
    global_settings: Mapping[str, Mapping[str, GlobalSetting]]
    # backend -> knob -> the metadata-builder attribute the knob sets (read when metadata is built)
    builder_attrs: Mapping[str, Mapping[str, str]]
    # backend -> knob -> the impl attribute the knob sets (read per call)
    impl_attrs: Mapping[str, Mapping[str, str]]
    common_builder: str  # "module:Class" every MLA metadata builder derives from (the plugin sees them all here)
    builder_decode_method: str  # builder method that builds decode metadata (per-batch knobs hook here)
    triton_kernel: TritonKernelCall
    cudagraph_max_tokens: int  # default max_cudagraph_capture_size
    cutlass_auto_splits: int  # CutlassMLAImpl._num_kv_splits meaning "the kernel picks"
    triton_min_work_per_split: int  # the TRITON_MLA split heuristic's constants
    triton_occupancy: int
    # How prefill is selected and reported: "switches" (0.20: attention-config booleans, builder flags, the impl's
    # _run_prefill_new_tokens_*) or "backend_object" (0.21+: mla_prefill_backend -> an MLAPrefillBackend held by
    # the attention layer and the metadata builder)
    prefill_api: str = "switches"
    # vLLM's MLA decode backend priority (platforms/cuda.py ``_get_backend_priorities``): capability major -> the
    # backends it tries in order; key 0 is every other GPU. vLLM runs the first that is valid here.
    mla_priority: Mapping[int, tuple[str, ...]] = field(default_factory=dict)
    # Can the vllm runner drive this family's internals (impls, builders, prefill selection) to measure kernels?
    runner_supported: bool = False
    # The newest release of the family whose TRITON_MLA decode kernel (triton_decode_attention.py, stage 1) computes
    # KV cache offsets, page number x page stride, in int32: past 2**31 elements of one cache it reads a wrapped
    # address (an illegal memory access that also leaves the GPU's CUDA contexts unusable). vLLM PR #47671 cast the
    # page number to int64 in 0.25.0; None: no release of the family has the overflow.
    triton_int32_kv_offsets_through: tuple[int, int] | None = None
    # builder attribute (of ``builder_attrs``) -> the builder's flags that must all be set for vLLM to use a value
    # set there; otherwise the builder keeps what its own __init__ chose
    builder_attr_requires: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # backend -> knob -> where built metadata reports the value in force (an attribute path), for measurements
    metadata_reports: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    notes: tuple[str, ...] = field(default=())

    def covers(self, version: tuple[int, int]) -> bool:
        return self.first <= version <= self.last

    @property
    def label(self) -> str:
        return f"vLLM {self.family}"

    def backend(self, name: str) -> BackendFacts | None:
        return self.backends.get(name)

    def graph_support(self, backend: str) -> str:
        """How far this vLLM replays ``backend`` in full CUDA graphs (an AttentionCGSupport level)."""
        facts = self.backends.get(backend)
        return facts.cuda_graph_support if facts is not None else "never"

    def search_space(self, backend: str, kv_cache_dtype: str = "auto", directory: Path | None = None) -> SearchSpace:
        """``backend``'s search space as this vLLM runs it: ``cuda_graphs`` searched only where it graphs the
        backend, knobs of one KV-cache dtype matter only with it."""
        return load_space(backend, self.graph_support(backend), directory).for_kv(kv_cache_dtype)

    def global_setting(self, knob: str, backend: str) -> GlobalSetting | None:
        per = self.global_settings.get(knob, {})
        return per.get(backend) or per.get("*")

    def prefill_available(self) -> tuple[str, ...]:
        return tuple(p for p in PREFILL_BACKENDS if p == "auto" or p in self.prefill_settings)

    def capability_refusal(self, backend: str, compute_capability: str) -> str | None:
        """Why ``backend`` cannot run on a GPU of ``compute_capability`` ("9.0") with this vLLM, or None."""
        facts = self.backends.get(backend)
        if facts is None:
            return f"{backend} does not exist in {self.label}"
        if facts.capability_majors is None:
            return None
        major = int(str(compute_capability).split(".")[0])
        if major in facts.capability_majors:
            return None
        need = " or ".join(f"{m}.x" for m in facts.capability_majors)
        return f"{backend} needs compute capability {need} (this GPU: {compute_capability})"

    def default_decode_backend(self, compute_capability: str, kv_cache_dtype: str = "auto") -> str | None:
        """The MLA decode backend this vLLM picks unasked on a GPU of ``compute_capability`` with this KV cache
        dtype: the first of its priority list that runs there (None: none does, the family lists none, or a
        backend mla-tune does not model comes first, e.g. 0.21's TOKENSPEED_MLA: whether vLLM would take it is
        unknown here, so no baseline is claimed)."""
        major = int(str(compute_capability).split(".")[0])
        fp8 = str(kv_cache_dtype).startswith("fp8")
        for name in self.mla_priority.get(major, self.mla_priority.get(0, ())):
            facts = self.backends.get(name)
            if facts is None:
                return None
            if self.capability_refusal(name, compute_capability) is None and (facts.fp8_kv or not fp8):
                return name
        return None

    def triton_int32_kv_offsets(self, version: tuple[int, int]) -> bool:
        """Does TRITON_MLA decode in vLLM ``version`` address a KV cache in int32 (see the field above)?"""
        last = self.triton_int32_kv_offsets_through
        return last is not None and version <= last

    def triton_kv_offset_refusal(self, version: tuple[int, int], cache_elements: int) -> str | None:
        """Why TRITON_MLA decode cannot run over a KV cache of ``cache_elements`` elements in vLLM ``version``
        (the 0.25 fix aside, the kernel addresses one cache in int32), or None."""
        if not self.triton_int32_kv_offsets(version) or cache_elements <= 2**31:
            return None
        return (f"TRITON_MLA decode in vLLM {version[0]}.{version[1]} addresses its KV cache in int32 and faults on "
                f"caches over 2**31 elements (this one: {cache_elements:,}); fixed in vLLM 0.25 (PR #47671)")

    def triton_serving_caution(self, version: tuple[int, int], head_size: int) -> str | None:
        """What a TRITON_MLA deployment on vLLM ``version`` must keep below, or None: each layer's KV cache is one
        tensor of num_gpu_blocks x block_size token slots of ``head_size`` elements, addressed in int32."""
        if not self.triton_int32_kv_offsets(version):
            return None
        tokens = 2**31 // head_size
        return (f"vLLM {version[0]}.{version[1]}'s TRITON_MLA decode faults (illegal memory access) once a layer's "
                f"KV cache holds more than {tokens:,} token slots ({head_size} elements each, addressed in int32; "
                f"fixed in vLLM 0.25, PR #47671): keep num_gpu_blocks x block_size at or below that "
                f"(--num-gpu-blocks-override {tokens // 64} at block size 64) or serve with vLLM 0.25+")

    def prefill_refusal(self, prefill: str, compute_capability: str) -> str | None:
        if prefill != "auto" and prefill not in self.prefill_settings:
            return f"{prefill} prefill does not exist in {self.label}"
        major = int(str(compute_capability).split(".")[0])
        if prefill in self.prefill_needs_sm100 and major != 10:
            return f"{prefill} prefill needs compute capability 10.x in {self.label} (this GPU: {compute_capability})"
        return None

    def triton_auto_splits(self, max_seq_len: int, sm_count: int) -> int:
        """The split count TRITON_MLA's heuristic picks (for reporting what ``auto`` ran)."""
        ideal = max(1, max_seq_len // self.triton_min_work_per_split)
        ideal = 1 << (ideal - 1).bit_length()  # triton.next_power_of_2
        return min(ideal, sm_count * self.triton_occupancy)


def padded_tokens(tokens: int, capture_sizes: Sequence[int] | None) -> int:
    """The CUDA-graph size a decode batch of ``tokens`` runs at: the smallest captured size that holds it.

    vLLM pads a decode batch up to a captured size and captures each size once, so a value keyed on the padded
    size is the same at capture and at every replay (one keyed on anything else would not be).
    """
    sizes = sorted(capture_sizes or ())
    i = bisect.bisect_left(sizes, tokens)
    return sizes[i] if i < len(sizes) else tokens
