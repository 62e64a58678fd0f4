"""vLLM 0.26: as 0.22-0.25, except that TRITON_MLA's full CUDA graphs narrowed to single-token decode batches
(AttentionCGSupport.UNIFORM_SINGLE_TOKEN_DECODE), its split count moved into ``triton_mla._compute_num_kv_splits``
(the kernel call the runner and the plugin wrap is unchanged) and the TRITON decode kernel computes KV offsets in
int64 (from 0.25).

Facts read from the released 0.26.0 source (notes-0.21-0.33.md). 0.26.0 ran on an H200 (2026-11-30): the runner's
GPU tests, the installed-name check and a short study; its plugin and engine path have not run on a GPU.
"""

from __future__ import annotations

from dataclasses import replace

from .v0_22 import ADAPTER as BASE
from .v0_22 import BACKENDS as BASE_BACKENDS
from ._facts import BackendFacts

_MLA = "vllm.v1.attention.backends.mla"

BACKENDS = {
    **BASE_BACKENDS,
    "TRITON_MLA": BackendFacts("TRITON_MLA", None, "uniform_single_token_decode",
                               f"{_MLA}.triton_mla:TritonMLAMetadataBuilder", f"{_MLA}.triton_mla:TritonMLAImpl"),
}

# mla_priority: 0.26.0's _get_backend_priorities gives SM12x a list of its own (TRITON_MLA first), which picks what
# 0.21-0.25's general list picks there, so the inherited list holds.
ADAPTER = replace(
    BASE, family="0.26", first=(0, 26), last=(0, 26),
    gpu_validated="0.26.0: runner gpu tests and a study on H200 (not the plugin)", backends=BACKENDS,
    triton_int32_kv_offsets_through=None,
    notes=("TRITON_MLA runs inside full graphs of single-token decode batches: its split count is fixed per captured "
           "batch size",
           "the reorder threshold has no vLLM setting: the plugin applies it"))
