"""vLLM 0.33 (November 2026, the newest release): written from its released source, not run on a GPU here
(it needs torch 2.14; the GPU machine has 2.11).

Differences from 0.26 that matter here: ``_build_decode`` takes ``max_query_len`` (0.31), TRITON_MLA graphs
uniform batches again, FLASHINFER_MLA graphs every batch (AttentionCGSupport.ALWAYS).
"""

from __future__ import annotations

from dataclasses import replace

from .v0_26 import ADAPTER as BASE
from .v0_26 import BACKENDS as BASE_BACKENDS
from ._facts import BackendFacts

_MLA = "vllm.v1.attention.backends.mla"

BACKENDS = {
    **BASE_BACKENDS,
    "TRITON_MLA": BackendFacts("TRITON_MLA", None, "uniform_batch", f"{_MLA}.triton_mla:TritonMLAMetadataBuilder",
                               f"{_MLA}.triton_mla:TritonMLAImpl"),
    "FLASHINFER_MLA": BackendFacts("FLASHINFER_MLA", (10,), "always",
                                   f"{_MLA}.flashinfer_mla:FlashInferMLAMetadataBuilder",
                                   f"{_MLA}.flashinfer_mla:FlashInferMLAImpl"),
}

# mla_priority: 0.33.0's _get_backend_priorities lists the dense MLA backends as 0.26 does (sparse ones aside), so
# the list inherited through BASE holds.
ADAPTER = replace(
    BASE, family="0.33", first=(0, 33), last=(0, 33), torch="2.14",
    # 0.33 reads the MLA dims off the layer and drops two CommonAttentionMetadata fields the runner passes; it needs
    # torch 2.14 as well, so the runner is not offered for it
    gpu_validated="", backends=BACKENDS, runner_supported=False,
    triton_int32_kv_offsets_through=None,
    notes=("TRITON_MLA runs inside full graphs of uniform decode batches: its split count is fixed per captured "
           "batch size",
           "the reorder threshold has no vLLM setting: the plugin applies it"))
