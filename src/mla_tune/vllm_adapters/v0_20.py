"""vLLM 0.20: the family the committed H100 results and the H200 runs were measured with (0.20.0).

Facts read from the released 0.20.0 source. 0.21 is not in this family although its config keeps the old prefill
switches: it selects prefill through MLAPrefillBackend objects (``mla_prefill_backend``), as 0.21-0.26 do.
"""

from __future__ import annotations

from dataclasses import replace

from ._facts import Adapter, BackendFacts, GlobalSetting, TritonKernelCall

_MLA = "vllm.v1.attention.backends.mla"
COMMON_BUILDER = "vllm.model_executor.layers.attention.mla_attention:MLACommonMetadataBuilder"


def backend(name: str, module: str, cls: str, majors: tuple[int, ...] | None, graphs: str) -> BackendFacts:
    return BackendFacts(name, majors, graphs, f"{_MLA}.{module}:{cls}MetadataBuilder", f"{_MLA}.{module}:{cls}Impl")


# supports_compute_capability of each backend; dense FlashMLA also needs is_flashmla_dense_supported (Hopper).
BACKENDS = {
    "CUTLASS_MLA": backend("CUTLASS_MLA", "cutlass_mla", "CutlassMLA", (10,), "uniform_single_token_decode"),
    "FLASHINFER_MLA": backend("FLASHINFER_MLA", "flashinfer_mla", "FlashInferMLA", (10,), "uniform_batch"),
    "FLASHMLA": backend("FLASHMLA", "flashmla", "FlashMLA", (9,), "uniform_batch"),
    # FlashAttnMLABackend.supported_kv_cache_dtypes: auto, float16, bfloat16 (no fp8)
    "FLASH_ATTN_MLA": replace(backend("FLASH_ATTN_MLA", "flashattn_mla", "FlashAttnMLA", (9,), "uniform_batch"),
                              fp8_kv=False),
    # TRITON_MLA uses the common MLA builder and runs outside full graphs (AttentionCGSupport.NEVER).
    "TRITON_MLA": BackendFacts("TRITON_MLA", None, "never", COMMON_BUILDER, f"{_MLA}.triton_mla:TritonMLAImpl"),
}

# vllm/config/attention.py; the FA versions also switch the non-FA paths off so that vLLM cannot prefer them.
_FA_ONLY = {"disable_flashinfer_prefill": True, "use_cudnn_prefill": False,
            "use_trtllm_ragged_deepseek_prefill": False}
PREFILL = {
    "fa2": {"flash_attn_version": 2, **_FA_ONLY},
    "fa3": {"flash_attn_version": 3, **_FA_ONLY},
    "fa4": {"flash_attn_version": 4, **_FA_ONLY},
    "flashinfer": {"disable_flashinfer_prefill": False, "use_cudnn_prefill": False,
                   "use_trtllm_ragged_deepseek_prefill": False},
    "cudnn": {"disable_flashinfer_prefill": True, "use_cudnn_prefill": True,
              "use_trtllm_ragged_deepseek_prefill": False},
    "trtllm": {"disable_flashinfer_prefill": True, "use_cudnn_prefill": False,
               "use_trtllm_ragged_deepseek_prefill": True},
}

GLOBAL = {
    "max_num_splits": {"FLASH_ATTN_MLA": GlobalSetting("attention_config",
                                                       "flash_attn_max_num_splits_for_cuda_graph")},
    # FULL_AND_PIECEWISE (the default) replays attention in full graphs for uniform decode batches;
    # PIECEWISE runs attention eagerly between graphed pieces.
    "cuda_graphs": {"*": GlobalSetting("compilation_config", "cudagraph_mode",
                                       spelled=((True, "FULL_AND_PIECEWISE"), (False, "PIECEWISE")))},
    "num_kv_splits": {"CUTLASS_MLA": GlobalSetting("env", "FORCE_NUM_KV_SPLITS", skip=("auto",))},
    "prefill_query_quantization": {"*": GlobalSetting("attention_config", "use_prefill_query_quantization")},
}

BUILDER_ATTRS = {
    "FLASHMLA": {"reorder_batch_threshold": "reorder_batch_threshold"},
    "FLASH_ATTN_MLA": {"reorder_batch_threshold": "reorder_batch_threshold", "max_num_splits": "max_num_splits"},
    "FLASHINFER_MLA": {"reorder_batch_threshold": "reorder_batch_threshold"},
}
IMPL_ATTRS = {"CUTLASS_MLA": {"num_kv_splits": "_num_kv_splits"}}
# FlashAttnMLAMetadataBuilder.__init__ copies the config's split cap into max_num_splits only under full CUDA graphs
# with FA3's ahead-of-time scheduler; otherwise it stays 0 (no cap) and a value set there would be one vLLM never has.
BUILDER_ATTR_REQUIRES = {"max_num_splits": ("fa_aot_schedule", "use_full_cuda_graph")}
# FlashAttnMLADecodeMetadata.max_num_splits: the cap the decode kernel got (0: FA's own heuristic)
METADATA_REPORTS = {"FLASH_ATTN_MLA": {"max_num_splits": "decode.max_num_splits"}}

# decode_attention_fwd(q, k_buffer, v_buffer, o, lse, req_to_token, b_seq_len, attn_logits, num_kv_splits, ...)
TRITON_KERNEL = TritonKernelCall(f"{_MLA}.triton_mla", "decode_attention_fwd", 7, "attn_logits", 8,
                                 "num_kv_splits")

# vllm/platforms/cuda.py _get_backend_priorities(use_mla=True): Blackwell (major 10) tries FlashInfer first, every
# other GPU FlashAttention MLA (so an H100/H200 runs FLASH_ATTN_MLA unasked, FLASHMLA with an fp8 KV cache, where
# FA MLA is invalid). The sparse backends that close both lists are not dense MLA and not tuned here.
MLA_PRIORITY = {
    10: ("FLASHINFER_MLA", "CUTLASS_MLA", "FLASH_ATTN_MLA", "FLASHMLA", "TRITON_MLA"),
    0: ("FLASH_ATTN_MLA", "FLASHMLA", "FLASHINFER_MLA", "TRITON_MLA"),
}

ADAPTER = Adapter(
    family="0.20", first=(0, 20), last=(0, 20), torch="2.11.0",
    gpu_validated="0.20.0: runner gpu tests and studies on H100 and H200, plugin end to end on H200",
    backends=BACKENDS, prefill_settings=PREFILL, prefill_needs_sm100=("flashinfer", "cudnn", "trtllm"),
    global_settings=GLOBAL, builder_attrs=BUILDER_ATTRS, impl_attrs=IMPL_ATTRS,
    common_builder=COMMON_BUILDER, builder_decode_method="_build_decode", triton_kernel=TRITON_KERNEL, cudagraph_max_tokens=512,
    cutlass_auto_splits=-1, triton_min_work_per_split=512, triton_occupancy=2, runner_supported=True,
    mla_priority=MLA_PRIORITY, triton_int32_kv_offsets_through=(0, 20),
    builder_attr_requires=BUILDER_ATTR_REQUIRES, metadata_reports=METADATA_REPORTS,
    notes=("TRITON_MLA's split count and the reorder threshold have no vLLM setting: the plugin applies them",))
