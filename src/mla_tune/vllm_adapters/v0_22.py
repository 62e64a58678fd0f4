"""vLLM 0.21-0.26: prefill chosen by ``mla_prefill_backend`` (MLAPrefillBackend objects from 0.21; cuDNN prefill
and the old switches removed in 0.22), TRITON_MLA with its own metadata builder and full CUDA graphs from 0.22, its
split count in ``triton_mla._compute_num_kv_splits`` (0.26).

Facts read from the released 0.21.0, 0.22.0 and 0.26.0 sources. 0.26.0 ran on an H200 (2026-11-30): the runner's
GPU tests, the installed-name check and a short study; its plugin and engine path have not run on a GPU, nor has any
0.21-0.25 release.

Known gap: from 0.22 vLLM replays TRITON_MLA decode inside full CUDA graphs, but its search space (shared with 0.20,
where TRITON_MLA never runs in a graph) has no ``cuda_graphs`` parameter, so the runner measures it eagerly on this
family: its launch overhead is in those numbers and not in serving.
"""

from __future__ import annotations

from dataclasses import replace

from .v0_20 import ADAPTER as BASE
from .v0_20 import BACKENDS as BASE_BACKENDS
from ._facts import BackendFacts

_MLA = "vllm.v1.attention.backends.mla"

BACKENDS = {
    **BASE_BACKENDS,
    # 0.22 gave TRITON_MLA its own builder with uniform-batch graphs; 0.26 narrowed them to single-token decode.
    "TRITON_MLA": BackendFacts("TRITON_MLA", None, "uniform_single_token_decode",
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
# 0.21.0, 0.22.0 and 0.26.0: SM100 puts TOKENSPEED_MLA (not modelled here) after FLASHINFER_MLA; 0.26 gives SM12x
# its own list (TRITON_MLA first), where 0.21-0.22 fall through to the general list, whose first backend that runs
# on SM12x is TRITON_MLA as well; every other GPU (Hopper) is unchanged from 0.20.
MLA_PRIORITY = {
    10: ("FLASHINFER_MLA", "TOKENSPEED_MLA", "CUTLASS_MLA", "FLASH_ATTN_MLA", "FLASHMLA", "TRITON_MLA"),
    12: ("TRITON_MLA",),
    0: ("FLASH_ATTN_MLA", "FLASHMLA", "FLASHINFER_MLA", "TRITON_MLA"),
}

ADAPTER = replace(
    BASE, family="0.21-0.26", first=(0, 21), last=(0, 26),
    # The runner builds the layer's MLAPrefillBackend as vLLM's MLAAttention does (see notes-0.21-0.33.md)
    gpu_validated="0.26.0: runner gpu tests and a study on H200 (not the plugin)", prefill_api="backend_object", runner_supported=True,
    backends=BACKENDS, prefill_settings=PREFILL, prefill_needs_sm100=("flashinfer", "trtllm"), mla_priority=MLA_PRIORITY,
    # read in the released sources: the int32 offsets are in 0.21.0-0.24.0, the int64 cast in 0.25.0 and 0.26.0
    triton_int32_kv_offsets_through=(0, 24),
    notes=("TRITON_MLA runs inside full decode graphs: its split count is fixed per captured batch size "
           "(mla-tune still measures it eagerly on this family)",
           "the reorder threshold has no vLLM setting: the plugin applies it"))
