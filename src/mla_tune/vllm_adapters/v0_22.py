"""vLLM 0.21-0.25: prefill chosen by ``mla_prefill_backend`` (MLAPrefillBackend objects from 0.21; cuDNN prefill
and the old switches removed in 0.22), TRITON_MLA with its own metadata builder and full CUDA graphs of uniform
batches from 0.22.

Facts read from the released 0.21.0 and 0.22.0 sources (notes-0.21-0.33.md). No 0.21-0.25 release has run on a GPU
here; 0.26 (``v0_26``), which differs only where it says, has.
"""

from __future__ import annotations

from dataclasses import replace

from .v0_20 import ADAPTER as BASE
from .v0_20 import BACKENDS as BASE_BACKENDS
from ._facts import BackendFacts

_MLA = "vllm.v1.attention.backends.mla"

BACKENDS = {
    **BASE_BACKENDS,
    # 0.22 gave TRITON_MLA its own builder (TritonMLAMetadataBuilder, AttentionCGSupport.UNIFORM_BATCH).
    "TRITON_MLA": BackendFacts("TRITON_MLA", None, "uniform_batch",
                               f"{_MLA}.triton_mla:TritonMLAMetadataBuilder", f"{_MLA}.triton_mla:TritonMLAImpl"),
}

# AttentionConfig.mla_prefill_backend (MLAPrefillBackendEnum) picks the prefill backend; flash_attn_version
# picks FA2/3/4 inside FLASH_ATTN. use_cudnn_prefill, use_trtllm_ragged_deepseek_prefill and
# disable_flashinfer_prefill were removed in 0.22.
PREFILL = {
    "fa2": {"mla_prefill_backend": "FLASH_ATTN", "flash_attn_version": 2},
    "fa3": {"mla_prefill_backend": "FLASH_ATTN", "flash_attn_version": 3},
    "fa4": {"mla_prefill_backend": "FLASH_ATTN", "flash_attn_version": 4},
    "flashinfer": {"mla_prefill_backend": "FLASHINFER"},
    "trtllm": {"mla_prefill_backend": "TRTLLM_RAGGED"},
}

# Which decode backend vLLM picks unasked (--backend auto), read from platforms/cuda.py _get_backend_priorities of
# 0.21.0 and 0.22.0: SM100 puts TOKENSPEED_MLA (not modelled here) after FLASHINFER_MLA; SM12x falls through to the
# general list, whose first backend that runs there is TRITON_MLA (0.26 gives SM12x a list of its own with the same
# outcome); every other GPU (Hopper) is unchanged from 0.20.
MLA_PRIORITY = {
    10: ("FLASHINFER_MLA", "TOKENSPEED_MLA", "CUTLASS_MLA", "FLASH_ATTN_MLA", "FLASHMLA", "TRITON_MLA"),
    12: ("TRITON_MLA",),
    0: ("FLASH_ATTN_MLA", "FLASHMLA", "FLASHINFER_MLA", "TRITON_MLA"),
}

ADAPTER = replace(
    BASE, family="0.21-0.25", first=(0, 21), last=(0, 25),
    # The runner builds the layer's MLAPrefillBackend as vLLM's MLAAttention does (see notes-0.21-0.33.md)
    gpu_validated="", prefill_api="backend_object", runner_supported=True,
    backends=BACKENDS, prefill_settings=PREFILL, prefill_needs_sm100=("flashinfer", "trtllm"), mla_priority=MLA_PRIORITY,
    # read in the released sources: the int32 offsets are in 0.21.0-0.24.0, the int64 cast in 0.25.0
    triton_int32_kv_offsets_through=(0, 24),
    notes=("TRITON_MLA runs inside full decode graphs from 0.22: its split count is fixed per captured batch size",
           "the reorder threshold has no vLLM setting: the plugin applies it"))
