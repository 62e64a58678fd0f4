"""Every dependency of the vllm runner on vLLM's internals (0.20-0.26): configs, MLA impls, metadata builders,
patches; names that differ between versions come from the installed vLLM's adapter.

Runs inside the worker process only. An ``Engine`` (VllmConfig + impl + metadata builder + mock layer) is built
once per ``EngineKey`` and cached; metadata once per (engine, inputs, reorder threshold, split cap); per-call
knobs (CUTLASS ``_num_kv_splits``, the forced TRITON split count) are set right before each call, so changing
only them rebuilds nothing. ``Session`` (in ``_vllm_session``) drives the measurements.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass, fields, is_dataclass
from collections.abc import Sequence
from typing import Any

import torch

from ..knobs import BACKENDS, PREFILL_BACKENDS
from ._vllm_plan import (EngineKey, Plan, adapter, block_size_for, builder_attributes, builder_flags,
                         capability_refusal,
                                  impl_attributes, order_requests, prefill_capability_refusal, prefill_mismatch,
                                  prefill_overrides, resolved_prefill)
from ._vllm_timing import Batch, Inputs, KVBProj, fill_batch
from ..types import BackendStatus, MLADims
from ..vllm_adapters._patches import force_splits

log = logging.getLogger("mla_tune.runners.vllm.engine")

LAYER_NAME = "model.layers.0.self_attn.attn"
MAX_MODEL_LEN = 163840  # DeepSeek-V3's max_position_embeddings: the 64k chunked-prefill workspace of serving
MAX_NUM_SEQS = 1024
MAX_NUM_BATCHED_TOKENS = 16384
# Metadata-builder flags that say which non-FA prefill path vLLM 0.20 took (MLACommonMetadataBuilder.__init__).
PREFILL_BUILDER_FLAGS = {"flashinfer": "_use_fi_prefill", "cudnn": "_use_cudnn_prefill",
                         "trtllm": "_use_trtllm_ragged_prefill"}
# functools caches in mla_attention.py that read the current config's prefill settings once per process: without
# clearing them the prefill path of the first engine built stays for every later one (the first three are gone
# from 0.21, where prefill selection is cached in the selector instead: ``clear_prefill_caches``).
_PREFILL_CACHES = ("use_flashinfer_prefill", "use_cudnn_prefill", "use_trtllm_ragged_deepseek_prefill",
                   "backend_supports_prefill_query_quantization")
# MLACommonImpl._run_prefill_new_tokens_<suffix> -> prefill path.
_PREFILL_METHODS = {"fa": None, "fi": "flashinfer", "cudnn": "cudnn", "trtllm_ragged": "trtllm"}


class UnsupportedCase(Exception):
    """vLLM cannot run this case here (reported as UNSUPPORTED, with this message)."""


def fp8_dtype() -> torch.dtype:
    from vllm.platforms import current_platform

    return current_platform.fp8_dtype()


def backend_class(name: str) -> Any:  # noqa: D401 - vLLM's registry, by enum name
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

    return AttentionBackendEnum[name].get_class()


def write_model_dir(dims: MLADims) -> str:
    """A config.json that is enough for vLLM's ModelConfig (no weights, no tokenizer, no network).

    ``num_attention_heads`` is the per-GPU head count: FA3's ahead-of-time scheduler reads it.
    """
    path = tempfile.mkdtemp(prefix=f"mla-tune-{dims.label}-")
    cfg = {"architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v2", "torch_dtype": "bfloat16",
           "vocab_size": 129280, "hidden_size": 7168, "intermediate_size": 18432,
           "moe_intermediate_size": 2048, "num_hidden_layers": 1, "num_attention_heads": dims.num_q_heads,
           "num_key_value_heads": dims.num_q_heads, "q_lora_rank": dims.q_lora_rank,
           "kv_lora_rank": dims.kv_lora_rank, "qk_nope_head_dim": dims.qk_nope_head_dim,
           "qk_rope_head_dim": dims.qk_rope_head_dim, "v_head_dim": dims.v_head_dim,
           "n_routed_experts": 256, "n_shared_experts": 1, "num_experts_per_tok": 8,
           "first_k_dense_replace": 1, "max_position_embeddings": MAX_MODEL_LEN, "rms_norm_eps": 1e-6,
           "rope_theta": 10000}
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f)
    return path


def make_vllm_config(model_dir: str, key: EngineKey, block_size: int) -> Any:
    """An offline VllmConfig; prefill choice through attention_config, full graphs through cudagraph_mode."""
    from vllm.config import (CacheConfig, CompilationConfig, ModelConfig, ParallelConfig, SchedulerConfig,
                             VllmConfig)
    from vllm.config.compilation import CUDAGraphMode

    # VllmConfig warns on every build that enforce_eager disables torch.compile and CUDA graphs: intended
    # (the timing code captures its own graphs). Set here, after vLLM's logging setup, which resets levels.
    logging.getLogger("vllm.config.vllm").setLevel(logging.ERROR)
    model_config = ModelConfig(model=model_dir, tokenizer=model_dir, skip_tokenizer_init=True,
                               dtype=torch.bfloat16, max_model_len=MAX_MODEL_LEN, enforce_eager=True, seed=0)
    cfg = VllmConfig(
        model_config=model_config,
        cache_config=CacheConfig(block_size=block_size, cache_dtype=key.kv_cache_dtype),
        scheduler_config=SchedulerConfig(max_num_seqs=MAX_NUM_SEQS, max_num_batched_tokens=MAX_NUM_BATCHED_TOKENS,
                                         max_model_len=MAX_MODEL_LEN, is_encoder_decoder=False),
        parallel_config=ParallelConfig(), compilation_config=CompilationConfig())
    for name, value in prefill_overrides(key.prefill_backend).items():
        if name == "mla_prefill_backend":  # after construction only an enum member is taken (0.21+)
            from vllm.v1.attention.backends.mla.prefill import MLAPrefillBackendEnum

            value = MLAPrefillBackendEnum[str(value)]
        setattr(cfg.attention_config, name, value)
    for name, value in key.attention:  # other engine-level knobs, by their attention-config field
        setattr(cfg.attention_config, name, value)
    if key.cuda_graphs:
        # enforce_eager keeps VllmConfig from compiling anything; the builders only read these two fields
        # (FlashAttnMLAMetadataBuilder / FlashMLAMetadataBuilder __init__), so set them as serving has them.
        cfg.compilation_config.cudagraph_mode = CUDAGraphMode.FULL_AND_PIECEWISE
        cfg.compilation_config.max_cudagraph_capture_size = adapter().cudagraph_max_tokens
    return cfg


def clear_prefill_caches() -> None:
    """Forget vLLM's cached prefill choices: the next config may ask for another prefill path."""
    from vllm.model_executor.layers.attention import mla_attention

    holders: list[tuple[Any, tuple[str, ...]]] = [(mla_attention, _PREFILL_CACHES)]
    if adapter().prefill_api == "backend_object":
        from vllm.v1.attention.backends.mla.prefill import selector

        holders.append((selector, ("_auto_select_mla_prefill_backend",)))
    for module, names in holders:
        for name in names:
            fn = getattr(module, name, None)
            if fn is not None and hasattr(fn, "cache_clear"):
                fn.cache_clear()


def make_prefill_backend(cfg: Any, dims: MLADims) -> Any:
    """The MLAPrefillBackend vLLM's MLAAttention layer holds (0.21+), built the same way; the builder clones it."""
    from vllm.v1.attention.backends.mla.prefill import get_mla_prefill_backend

    return get_mla_prefill_backend(cfg)(
        num_heads=dims.num_q_heads, scale=float((dims.qk_nope_head_dim + dims.qk_rope_head_dim) ** -0.5),
        kv_lora_rank=dims.kv_lora_rank, qk_nope_head_dim=dims.qk_nope_head_dim,
        qk_rope_head_dim=dims.qk_rope_head_dim, v_head_dim=dims.v_head_dim, vllm_config=cfg)


# MLAPrefillBackend.get_name() -> the prefill_backend value mla-tune calls it (FA's version is read separately).
_PREFILL_BACKEND_NAMES = {"FLASHINFER": "flashinfer", "TRTLLM_RAGGED": "trtllm", "TOKENSPEED_MLA": "tokenspeed"}


def prefill_taken(builder: Any, impl: Any) -> tuple[str, str]:
    """(what the impl runs, what the builder prepared) for prefill: they must agree, and match what was asked."""
    if adapter().prefill_api == "backend_object":
        backend = getattr(builder, "_prefill_backend", None)
        name = type(backend).get_name() if backend is not None else "none"
        taken = (f"fa{getattr(backend, 'vllm_flash_attn_version', None) or '?'}" if name == "FLASH_ATTN"
                 else _PREFILL_BACKEND_NAMES.get(name, name.lower()))
        return taken, taken  # one object decides for both in 0.21+
    flags = {name: bool(getattr(builder, attr, False)) for name, attr in PREFILL_BUILDER_FLAGS.items()}
    from_flags = resolved_prefill(flags["flashinfer"], flags["cudnn"], flags["trtllm"],
                                  getattr(impl, "vllm_flash_attn_version", None))
    return _impl_prefill(impl) or from_flags, from_flags


def _mock_layer_class() -> type:
    from vllm.model_executor.layers.attention_layer_base import AttentionLayerBase

    class MockLayer(AttentionLayerBase):
        """What the impls read from the attention layer: unit fp8 scales, the impl (for FlashInfer plans)."""

        def __init__(self, impl: Any, backend: Any, spec: Any, device: torch.device) -> None:
            for name in ("_q_scale", "_k_scale", "_v_scale", "_prob_scale"):
                setattr(self, name, torch.ones(1, dtype=torch.float32, device=device))
            self._q_scale_float = self._k_scale_float = self._v_scale_float = 1.0
            self.impl, self._backend, self._spec = impl, backend, spec

        def get_attn_backend(self) -> Any:
            return self._backend

        def get_kv_cache_spec(self, vllm_config: Any = None) -> Any:
            return self._spec

    return MockLayer


@dataclass
class Engine:
    key: EngineKey
    vllm_config: Any
    backend_cls: Any
    impl: Any
    builder: Any
    layer: Any
    block_size: int
    prefill: str  # the prefill path vLLM really took
    builder_defaults: dict[str, Any]  # the builder's own values of every attribute a knob may set (restored first)

    def context(self) -> Any:
        """vLLM reads the current config in constructors and some calls: keep ours current."""
        from vllm.config import set_current_vllm_config

        return set_current_vllm_config(self.vllm_config)


def _impl_prefill(impl: Any) -> str | None:
    method = getattr(getattr(impl, "_run_prefill_new_tokens", None), "__name__", "")
    suffix = method.removeprefix("_run_prefill_new_tokens_")
    if suffix == "fa":
        version = getattr(impl, "vllm_flash_attn_version", None)
        return f"fa{version}" if version else "fa?"
    return _PREFILL_METHODS.get(suffix)


def check_kv_dtype(key: EngineKey, backend_cls: Any) -> None:
    supported = list(getattr(backend_cls, "supported_kv_cache_dtypes", []) or [])
    if key.kv_cache_dtype != "auto" and key.kv_cache_dtype not in supported:
        raise UnsupportedCase(f"{key.backend} does not support kv_cache_dtype {key.kv_cache_dtype} in vLLM "
                              f"{vllm_version()} "
                              f"(supported: {', '.join(map(str, supported))})")


def build_engine(key: EngineKey, model_dir: str, kv_b_proj: KVBProj, device: torch.device,
                 tracker: Any) -> Engine:
    """Build config, impl, mock layer and metadata builder for ``key``; verify the prefill path."""
    from vllm.v1.attention.backend import AttentionType
    from vllm.v1.kv_cache_interface import MLAAttentionSpec

    dims = key.dims
    tracker.step = "build engine: backend class"
    backend_cls = backend_class(key.backend)
    check_kv_dtype(key, backend_cls)
    block_size = block_size_for(backend_cls.get_supported_kernel_block_sizes())
    tracker.step = "build engine: VllmConfig"
    cfg = make_vllm_config(model_dir, key, block_size)
    with _context(cfg):
        clear_prefill_caches()
        tracker.step = "build engine: impl"
        impl = backend_cls.get_impl_cls()(
            num_heads=dims.num_q_heads, head_size=dims.head_size,
            scale=float((dims.qk_nope_head_dim + dims.qk_rope_head_dim) ** -0.5), num_kv_heads=1,
            alibi_slopes=None, sliding_window=None, kv_cache_dtype=key.kv_cache_dtype, logits_soft_cap=None,
            attn_type=AttentionType.DECODER, kv_sharing_target_layer_name=None, q_lora_rank=dims.q_lora_rank,
            kv_lora_rank=dims.kv_lora_rank, qk_nope_head_dim=dims.qk_nope_head_dim,
            qk_rope_head_dim=dims.qk_rope_head_dim, qk_head_dim=dims.qk_nope_head_dim + dims.qk_rope_head_dim,
            v_head_dim=dims.v_head_dim, kv_b_proj=kv_b_proj)
        # MLACommonImpl.__init__ (0.20-0.26) sets dcp_world_size to -1 for vLLM's model runner to fill in, and
        # forward_mha asserts it is not -1; without a model runner we set what a single GPU has.
        impl.dcp_world_size, impl.dcp_rank = 1, 0
        spec = MLAAttentionSpec(block_size=block_size, num_kv_heads=1, head_size=dims.head_size,
                                dtype=torch.bfloat16 if key.kv_cache_dtype == "auto" else torch.uint8,
                                cache_dtype_str=key.kv_cache_dtype)
        layer = _mock_layer_class()(impl, backend_cls, spec, device)
        if adapter().prefill_api == "backend_object":
            tracker.step = "build engine: prefill backend"
            layer.prefill_backend = make_prefill_backend(cfg, dims)
        cfg.compilation_config.static_forward_context[LAYER_NAME] = layer
        tracker.step = "build engine: metadata builder"
        builder = backend_cls.get_builder_cls()(spec, [LAYER_NAME], cfg, device)
    tracker.step = "build engine: verify prefill"
    resolved, from_flags = prefill_taken(builder, impl)
    if resolved != from_flags:
        raise UnsupportedCase(f"vLLM's impl runs {resolved} prefill but its metadata builder prepared "
                              f"{from_flags}")
    mismatch = prefill_mismatch(key.prefill_backend, resolved)
    if mismatch:
        raise UnsupportedCase(mismatch)
    if key.backend == "TRITON_MLA":
        install_triton_override()
    settable = adapter().builder_attrs.get(key.backend, {}).values()
    defaults = {attr: getattr(builder, attr) for attr in settable if hasattr(builder, attr)}
    return Engine(key, cfg, backend_cls, impl, builder, layer, block_size, resolved, defaults)


def _context(cfg: Any) -> Any:
    from vllm.config import set_current_vllm_config

    return set_current_vllm_config(cfg)


def _builder_tensors(builder: Any) -> set[int]:
    return {v.untyped_storage().data_ptr() for v in vars(builder).values() if isinstance(v, torch.Tensor)}


def detach_persistent_buffers(meta: Any, builder: Any) -> int:
    """Clone metadata tensors that alias the builder's persistent buffers; returns how many.

    Under full CUDA graphs FA3's builder writes the scheduler metadata into one preallocated buffer (and
    FlashMLA's fp8 path its tile metadata), so metadata built later for another shape would overwrite the
    one cached for this shape. A private copy holds the same values, as serving's buffer does at that step.
    """
    owned = _builder_tensors(builder)
    count = 0
    for holder in (meta, getattr(meta, "decode", None), getattr(getattr(meta, "decode", None),
                                                                 "scheduler_metadata", None)):
        if holder is None or isinstance(holder, torch.Tensor):
            continue
        names = [f.name for f in fields(holder)] if is_dataclass(holder) else list(vars(holder))
        for name in names:
            value = getattr(holder, name, None)
            if isinstance(value, torch.Tensor) and value.untyped_storage().data_ptr() in owned:
                setattr(holder, name, value.clone())
                count += 1
    return count


def apply_builder_settings(engine: Engine, plan: Plan) -> int:
    """Restore the builder's own values, then set the plan's (``builder_attributes``); returns the threshold in force."""
    for name, value in engine.builder_defaults.items():
        setattr(engine.builder, name, value)
    flags = {f: bool(getattr(engine.builder, f, False)) for f in builder_flags()}
    for name, value in builder_attributes(plan, flags).items():
        setattr(engine.builder, name, value)
    return int(engine.builder.reorder_batch_threshold)


def common_metadata_fields(inputs: Inputs, order: Sequence[int], device: torch.device) -> dict[str, Any]:
    """Keyword arguments for vLLM's CommonAttentionMetadata for the requests in ``order``."""
    reqs = [inputs.requests[i] for i in order]
    q_lens = torch.tensor([r.q_len for r in reqs], dtype=torch.int32)
    seq_lens = torch.tensor([r.kv_len for r in reqs], dtype=torch.int32)
    qsl = torch.zeros(len(reqs) + 1, dtype=torch.int32)
    torch.cumsum(q_lens, 0, out=qsl[1:])
    width = max(len(inputs.blocks[i]) for i in order)
    table = torch.zeros(len(reqs), width, dtype=torch.int32)  # padding points at block 0, never read
    for row, i in enumerate(order):
        table[row, : len(inputs.blocks[i])] = inputs.blocks[i]
    slots = []
    for row, r in enumerate(reqs):
        pos = torch.arange(r.context_len, r.kv_len)
        slots.append(table[row, pos // inputs.block_size].long() * inputs.block_size + pos % inputs.block_size)
    return dict(query_start_loc=qsl.to(device), query_start_loc_cpu=qsl, seq_lens=seq_lens.to(device),
                num_reqs=len(reqs), num_actual_tokens=int(qsl[-1]), max_query_len=int(q_lens.max()),
                max_seq_len=int(seq_lens.max()), block_table_tensor=table.to(device),
                slot_mapping=torch.cat(slots).to(device), causal=True, seq_lens_cpu_upper_bound=seq_lens,
                _seq_lens_cpu=seq_lens, _num_computed_tokens_cpu=seq_lens - q_lens)


def build_batch(engine: Engine, inputs: Inputs, plan: Plan, device: torch.device) -> Batch:
    """vLLM metadata for the case's threshold and split cap, plus its decode/prefill tensors."""
    try:
        from vllm.v1.attention.backends.utils import CommonAttentionMetadata
    except ImportError:
        from vllm.v1.attention.backend import CommonAttentionMetadata

    threshold = apply_builder_settings(engine, plan)
    order = order_requests(inputs.requests, threshold)
    cm = CommonAttentionMetadata(**common_metadata_fields(inputs, order, device))
    with engine.context():
        meta = engine.builder.build(common_prefix_len=0, common_attn_metadata=cm)
    detach_persistent_buffers(meta, engine.builder)
    td = int(meta.num_decode_tokens)
    perm = torch.tensor(inputs.token_permutation(order), device=device)
    batch = Batch(meta, perm, td, int(perm.numel()) - td, threshold)
    quant = (engine.key.kv_cache_dtype != "auto" and getattr(engine.impl, "supports_quant_query_input", False))
    return fill_batch(batch, inputs, engine.impl.kv_b_proj.weight, fp8_dtype() if quant else None)


# -- TRITON_MLA split override ------------------------------------------------------------------
class _TritonOverride:
    forced: int | None = None  # None: vLLM's heuristic stands
    used: int | None = None  # what the kernel got on the last call


TRITON = _TritonOverride()


def install_triton_override() -> None:
    """Wrap the decode kernel that triton_mla.py imported, so that a forced split count reaches it with a scratch
    buffer of matching shape (the same rewrite the serving plugin does: ``_patches.force_splits``)."""
    import importlib

    kc = adapter().triton_kernel
    module = importlib.import_module(kc.module)
    original = getattr(module, kc.function)
    if getattr(original, "_mla_tune_override", False):
        return

    def decode_attention_fwd(*args: Any, **kwargs: Any) -> Any:
        args = list(args)
        forced = TRITON.forced
        was = int(args[kc.splits_arg] if len(args) > kc.splits_arg else kwargs[kc.splits_kw])
        if forced is not None:
            force_splits(args, kwargs, kc, forced)
        TRITON.used = forced if forced is not None else was
        return original(*args, **kwargs)

    decode_attention_fwd._mla_tune_override = True  # type: ignore[attr-defined]
    decode_attention_fwd.__wrapped__ = original  # type: ignore[attr-defined]
    setattr(module, kc.function, decode_attention_fwd)


def apply_call_settings(engine: Engine, plan: Plan) -> None:
    """Per-call knobs: nothing is rebuilt when only these change."""
    for name, value in impl_attributes(plan).items():
        setattr(engine.impl, name, value)
    TRITON.forced = plan.triton_splits if engine.key.backend == "TRITON_MLA" else None
    TRITON.used = None


def forward(engine: Engine, batch: Batch, cache: torch.Tensor) -> torch.Tensor | None:
    """One layer's attention as vLLM's MLA layer splits it: forward_mha for the prefill part, forward_mqa
    for the decode part. Returns the decode part's latent output (None without one)."""
    o = None
    if batch.num_prefill_tokens:
        engine.impl.forward_mha(batch.q_prefill, batch.kc_prefill, batch.kpe_prefill, cache, batch.meta,
                                engine.layer._k_scale, batch.out_prefill)
    if batch.num_decode_tokens:
        o, _ = engine.impl.forward_mqa(batch.q_decode, cache, batch.meta, engine.layer)
    return o


# -- what can run here --------------------------------------------------------------------------
def _decode_status(name: str, cc: str) -> BackendStatus:
    refusal = capability_refusal(name, cc)
    if refusal:  # checked first: FLASHINFER_MLA allocates GPU memory when its module is imported
        return BackendStatus(name, "decode", False, refusal)
    try:
        backend_class(name)
        if name == "FLASHMLA":
            from vllm.v1.attention.ops.flashmla import is_flashmla_dense_supported

            ok, why = is_flashmla_dense_supported()
            if not ok:
                return BackendStatus(name, "decode", False, f"FLASHMLA: {why}")
        if name == "FLASH_ATTN_MLA":
            from vllm.v1.attention.backends.fa_utils import flash_attn_supports_mla

            if not flash_attn_supports_mla():
                return BackendStatus(name, "decode", False, "FLASH_ATTN_MLA needs FA3 on compute capability "
                                     f"9.x ({_fa_reason(3) or 'FA3 unavailable'})")
    except Exception as exc:  # noqa: BLE001 - an import failure is a reason, not a crash
        return BackendStatus(name, "decode", False, f"{name} does not import: {type(exc).__name__}: {exc}")
    return BackendStatus(name, "decode", True)


def _fa_reason(version: int) -> str | None:
    from vllm.vllm_flash_attn.flash_attn_interface import fa_version_unsupported_reason

    return fa_version_unsupported_reason(version)


def _prefill_status(name: str, cc: str) -> BackendStatus:
    try:
        if name.startswith("fa"):
            version = int(name[2:])
            why = _fa_reason(version)
            if why:
                return BackendStatus(name, "prefill", False, f"{name}: {why}")
            if version == 4:
                import importlib.util

                missing = [m for m in ("cutlass", "quack") if importlib.util.find_spec(m) is None]
                if missing:
                    return BackendStatus(name, "prefill", False, "fa4 (FlashAttention CuTe DSL) needs the "
                                         f"python package(s) {', '.join(missing)}, not installed")
            return BackendStatus(name, "prefill", True)
        refusal = prefill_capability_refusal(name, cc)
        if refusal:
            return BackendStatus(name, "prefill", False, refusal)
        from vllm.utils.flashinfer import has_flashinfer

        if not has_flashinfer():
            return BackendStatus(name, "prefill", False, f"{name} prefill needs FlashInfer, not installed")
    except Exception as exc:  # noqa: BLE001
        return BackendStatus(name, "prefill", False, f"{name}: {type(exc).__name__}: {exc}")
    return BackendStatus(name, "prefill", True)


def backend_statuses(cc: str) -> tuple[BackendStatus, ...]:
    """Every decode backend and every prefill path, with the installed vLLM's own checks where it has them."""
    prefill = tuple(p for p in PREFILL_BACKENDS if p != "auto")
    return tuple(_decode_status(n, cc) for n in BACKENDS) + tuple(_prefill_status(p, cc) for p in prefill)


def vllm_version() -> str:
    import vllm

    return str(getattr(vllm, "__version__", "unknown"))
