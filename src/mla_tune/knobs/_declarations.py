"""The knobs mla-tune tunes, one declaration each, in the order ``SearchSpace.resolve`` decides them.

The order matters: the reorder threshold decides which requests are decode and which prefill, which decides
whether the prefill kernel and the split counts matter; whether vLLM replays a full CUDA graph depends on the
threshold; FA3's split cap is read only under such a graph. Each rule mirrors vLLM's own code path, cited there.
"""

from __future__ import annotations

from ..types import ParamValue
from ._knob import Knob, RunnerApply, ServingApply, Situation

BACKENDS = ("CUTLASS_MLA", "FLASHMLA", "FLASH_ATTN_MLA", "TRITON_MLA", "FLASHINFER_MLA")
PREFILL_BACKENDS = ("auto", "fa2", "fa3", "fa4", "flashinfer", "cudnn", "trtllm")


def _has_spec_decode(s: Situation) -> bool:
    # With every request at q_len 1 any threshold >= 1 sends all of them to the decode pipeline.
    return any(r.q_len > 1 for r in s.shape.requests)


def _split_key(s: Situation, threshold: int) -> tuple[bool, ...]:
    return tuple(r.q_len <= threshold for r in s.shape.requests)


def _threshold_class(s: Situation, value: ParamValue) -> ParamValue:
    """Thresholds that split the batch the same way run the same kernels: one representative per class.

    The representative is vLLM's default where it is in the class (so "no change" reads as no change), else the
    largest value of the class, the least change from the default downwards.
    """
    p = s.space["reorder_batch_threshold"]
    key = _split_key(s, int(value))
    same = [v for v in p.values() if _split_key(s, int(v)) == key]
    if not same:  # a value outside the space (an API caller's): its own class
        return int(value)
    return int(p.default) if p.default in same else int(max(same))


def _prefill_matters(s: Situation) -> bool:
    return s.space.backend in PREFILL.affects_decode_on or bool(s.shape.prefill_requests(s.threshold))


def _has_decode(s: Situation) -> bool:
    return bool(s.shape.decode_requests(s.threshold))


def _graphable(s: Situation) -> bool:
    return s.space.graphable(s.shape, s.threshold)


def _fa3_cap_read(s: Situation) -> bool:
    # FlashAttnMLAMetadataBuilder copies the cap only under full graphs with FA3's ahead-of-time scheduler;
    # selecting FA2 (for prefill) turns that scheduler off and the cap is never read.
    return s.graphed and s.config.get("prefill_backend") != "fa2"


REORDER_BATCH_THRESHOLD = Knob(
    name="reorder_batch_threshold", type="int",
    backends=("FLASHMLA", "FLASH_ATTN_MLA", "FLASHINFER_MLA"),
    defaults={"FLASHMLA": 128, "FLASH_ATTN_MLA": 512, "FLASHINFER_MLA": 1},
    description="requests with q_len <= this run the decode pipeline, the rest the prefill pipeline",
    runner=RunnerApply.BUILDER, serving=ServingApply.PLUGIN_AT_BUILD,
    matters=_has_spec_decode, canonical=_threshold_class, detail_key="reorder_batch_threshold")

PREFILL = Knob(
    name="prefill_backend", type="categorical", backends=BACKENDS,
    defaults={b: "auto" for b in BACKENDS}, domain=PREFILL_BACKENDS[1:], auto=True,
    description="prefill kernel for the batch part above the reorder threshold (auto = vLLM picks)",
    runner=RunnerApply.ENGINE, serving=ServingApply.ATTENTION_CONFIG,
    matters=_prefill_matters, detail_key="prefill",
    # FA2 selected for prefill turns off FA3's ahead-of-time decode scheduling: selecting it sets vLLM's flash-attn
    # version to 2, FlashAttnMLAMetadataBuilder schedules ahead of time (and reads the split cap) only on version 3.
    affects_decode_on=("FLASH_ATTN_MLA",))

def _fp8_prefill(s: Situation) -> bool:
    # vLLM quantizes prefill queries only with an fp8 KV cache, a prefill part, and a prefill path that has fp8
    # kernels (FlashInfer or TRT-LLM ragged, SM100: mla_attention.backend_supports_prefill_query_quantization).
    return s.fp8_kv and bool(s.shape.prefill_requests(s.threshold)) and \
        s.config.get("prefill_backend", "auto") in ("auto", "flashinfer", "trtllm")


PREFILL_QUERY_QUANTIZATION = Knob(
    name="prefill_query_quantization", type="bool", backends=("CUTLASS_MLA", "FLASHINFER_MLA"),
    defaults={"CUTLASS_MLA": False, "FLASHINFER_MLA": False},
    description="quantize prefill queries to fp8 (fp8 KV cache, FlashInfer or TRT-LLM prefill, SM100)",
    runner=RunnerApply.ENGINE, serving=ServingApply.ATTENTION_CONFIG, matters=_fp8_prefill)

NUM_KV_SPLITS = Knob(
    name="num_kv_splits", type="categorical", backends=("CUTLASS_MLA", "TRITON_MLA"),
    defaults={"CUTLASS_MLA": "auto", "TRITON_MLA": "auto"}, auto=True,
    description="KV splits of the decode kernel (auto = vLLM's heuristic or the kernel's own choice)",
    runner=RunnerApply.KERNEL_CALL, serving=ServingApply.PLUGIN_PER_BATCH,
    matters=_has_decode, detail_key="num_kv_splits")

CUDA_GRAPHS = Knob(
    # every backend: whether the target vLLM graphs it at all is its family's fact (SearchSpace.under_graphs)
    name="cuda_graphs", type="bool", backends=BACKENDS, defaults={b: True for b in BACKENDS},
    description="replay a full CUDA graph, as vLLM does for uniform decode batches it captured",
    runner=RunnerApply.ENGINE, serving=ServingApply.COMPILATION_CONFIG,
    # Where vLLM would not graph the batch it runs eager whatever the setting says: measure that.
    matters=_graphable, idle=lambda s: False)

MAX_NUM_SPLITS = Knob(
    name="max_num_splits", type="int", backends=("FLASH_ATTN_MLA",), defaults={"FLASH_ATTN_MLA": 32},
    description="flash-attn split cap for FA3's scheduler under full CUDA graphs",
    runner=RunnerApply.BUILDER, serving=ServingApply.PLUGIN_PER_BATCH,
    matters=_fa3_cap_read, detail_key="fa_num_splits")

KNOBS: tuple[Knob, ...] = (REORDER_BATCH_THRESHOLD, PREFILL, PREFILL_QUERY_QUANTIZATION, NUM_KV_SPLITS, CUDA_GRAPHS,
                           MAX_NUM_SPLITS)
