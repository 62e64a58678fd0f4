"""vLLM 0.22-0.25: as 0.21, and TRITON_MLA got its own metadata builder with full CUDA graphs of uniform batches
(0.22).

Facts read from the released 0.22.0 source (notes-0.21-0.33.md). No 0.22-0.25 release has run on a GPU here;
0.26 (``v0_26``), which differs only where it says, has.
"""

from __future__ import annotations

from dataclasses import replace

from .v0_21 import ADAPTER as BASE
from .v0_20 import BACKENDS as BASE_BACKENDS
from ._facts import BackendFacts

_MLA = "vllm.v1.attention.backends.mla"

BACKENDS = {
    **BASE_BACKENDS,
    # 0.22 gave TRITON_MLA its own builder (TritonMLAMetadataBuilder, AttentionCGSupport.UNIFORM_BATCH).
    "TRITON_MLA": BackendFacts("TRITON_MLA", None, "uniform_batch",
                               f"{_MLA}.triton_mla:TritonMLAMetadataBuilder", f"{_MLA}.triton_mla:TritonMLAImpl"),
}

ADAPTER = replace(
    BASE, family="0.22-0.25", first=(0, 22), last=(0, 25), backends=BACKENDS,
    # read in the released sources: the int32 offsets are in 0.22.0-0.24.0, the int64 cast in 0.25.0
    triton_int32_kv_offsets_through=(0, 24),
    notes=("TRITON_MLA runs inside full decode graphs: its split count is fixed per captured batch size",
           "the reorder threshold has no vLLM setting: the plugin applies it"))
