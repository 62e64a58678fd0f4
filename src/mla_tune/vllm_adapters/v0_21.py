"""vLLM 0.21: prefill chosen by ``mla_prefill_backend``, an MLAPrefillBackend object held by the attention layer and
the metadata builder (cuDNN prefill gone: ``use_cudnn_prefill=True`` raises); TRITON_MLA still on the common
builder, outside full CUDA graphs, as in 0.20.

Facts read from the released 0.21.0 source (notes-0.21-0.33.md); no 0.21 release has run on a GPU here.
"""

from __future__ import annotations

from dataclasses import replace

from .v0_20 import ADAPTER as BASE

# AttentionConfig.mla_prefill_backend (MLAPrefillBackendEnum) picks the prefill backend; flash_attn_version
# picks FA2/3/4 inside FLASH_ATTN. use_cudnn_prefill, use_trtllm_ragged_deepseek_prefill and
# disable_flashinfer_prefill are read only when the config is built in 0.21 (a later
# setattr does nothing) and were removed in 0.22.
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
    BASE, family="0.21", first=(0, 21), last=(0, 21),
    # The runner builds the layer's MLAPrefillBackend as vLLM's MLAAttention does (see notes-0.21-0.33.md)
    gpu_validated="", prefill_api="backend_object", runner_supported=True,
    prefill_settings=PREFILL, prefill_needs_sm100=("flashinfer", "trtllm"), mla_priority=MLA_PRIORITY,
    # read in the released source: the TRITON kernel's KV offsets are int32 in 0.21.0 (int64 from 0.25.0)
    triton_int32_kv_offsets_through=(0, 21))
