"""The serving plugin's hooks inside a running vLLM: wrap metadata builders, impls and TRITON's kernel call.

Names come from the adapter of the installed vLLM. Each wrapper asks the ``Applier`` (``serving.plugin``) what
to do and falls back to vLLM's own behaviour on any surprise (``applier.fail``): a patch can disable itself,
never break a forward pass. ``force_splits`` is shared with the runner, which forces TRITON splits the same way.
"""

from __future__ import annotations

import contextvars
import functools
import importlib
import inspect
from typing import Any

from ._facts import Adapter, TritonKernelCall, padded_tokens

_MARK = "_mla_tune_patched"
# TRITON_MLA's forward_mqa knows the batch's max sequence length; its kernel call does not.
_CONTEXT: contextvars.ContextVar[int | None] = contextvars.ContextVar("mla_tune_context", default=None)


def load(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def force_splits(args: list, kwargs: dict, kc: TritonKernelCall, forced: int) -> int:
    """Rewrite a decode-kernel call in place to use ``forced`` KV splits; returns the split count it had.

    The kernel's scratch buffer ``attn_logits`` is (B, H, splits, lora_rank + 1): a view of the first elements of
    vLLM's buffer where that is large enough (vLLM may hand out a reserved workspace), else a new one.
    """
    in_args = len(args) > kc.splits_arg
    was = int(args[kc.splits_arg] if in_args else kwargs[kc.splits_kw])
    if forced == was:
        return was
    logits_in_args = len(args) > kc.logits_arg
    logits = args[kc.logits_arg] if logits_in_args else kwargs[kc.logits_kw]
    b, h, _, width = logits.shape
    need = b * h * forced * width
    if logits.is_contiguous() and logits.numel() >= need:
        new = logits.view(-1)[:need].view(b, h, forced, width)
    else:
        new = logits.new_empty((b, h, forced, width))
    if logits_in_args:
        args[kc.logits_arg] = new
    else:
        kwargs[kc.logits_kw] = new
    if in_args:
        args[kc.splits_arg] = forced
    else:
        kwargs[kc.splits_kw] = forced
    return was


def _engine_facts(builder: Any, backend: str, vllm_config: Any, kv_cache_spec: Any, adapter: Adapter) -> Any:
    import torch

    from ..types import EngineMatch, gpu_short_name

    device = getattr(builder, "device", None)
    index = device.index if getattr(device, "index", None) is not None else torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    model = vllm_config.model_config
    hf = model.hf_text_config if hasattr(model, "hf_text_config") else model.hf_config
    cache_dtype = str(getattr(vllm_config.cache_config, "cache_dtype", "auto"))
    return EngineMatch(
        gpu=gpu_short_name(torch.cuda.get_device_name(index)), compute_capability=f"{major}.{minor}", backend=backend,
        num_q_heads=int(model.get_num_attention_heads(vllm_config.parallel_config)),
        kv_lora_rank=int(getattr(hf, "kv_lora_rank", 0)), qk_rope_head_dim=int(getattr(hf, "qk_rope_head_dim", 0)),
        kv_cache_dtype="auto" if cache_dtype in ("auto", "bfloat16", "float16") else
        ("fp8" if cache_dtype.startswith("fp8") else cache_dtype), vllm=adapter.family)


def _wrap_builder_init(cls: Any, backend: str, applier: Any, adapter: Adapter) -> None:
    original = cls.__init__

    @functools.wraps(original)
    def __init__(self: Any, kv_cache_spec: Any, layer_names: Any, vllm_config: Any, device: Any, *a: Any,
                 **kw: Any) -> None:
        original(self, kv_cache_spec, layer_names, vllm_config, device, *a, **kw)
        if type(self) is not cls:  # a subclass's own wrapper runs when its __init__ is done
            return
        try:
            if applier.on_engine(_engine_facts(self, backend, vllm_config, kv_cache_spec, adapter)):
                for attr, value in applier.builder_settings(backend).items():
                    setattr(self, attr, value)
        except Exception as exc:  # noqa: BLE001
            applier.fail(exc, f"{cls.__name__}.__init__")

    setattr(__init__, _MARK, True)
    cls.__init__ = __init__


def _wrap_build_decode(cls: Any, attr: str, knob: str, applier: Any, adapter: Adapter) -> None:
    """Per decode batch: set the builder attribute ``attr`` for this call only, from the padded batch size."""
    method_name = adapter.builder_decode_method
    original = getattr(cls, method_name)
    signature = inspect.signature(original)

    @functools.wraps(original)
    def build_decode(self: Any, *args: Any, **kwargs: Any) -> Any:
        value = None
        if applier.active:
            try:
                tokens = int(signature.bind(self, *args, **kwargs).arguments["num_decode_tokens"])
                sizes = getattr(getattr(self, "compilation_config", None), "cudagraph_capture_sizes", None)
                value = applier.per_batch(knob, padded_tokens(tokens, sizes))
            except Exception as exc:  # noqa: BLE001
                applier.fail(exc, f"{cls.__name__}.{method_name}")
        if value is None:
            return original(self, *args, **kwargs)
        before = getattr(self, attr)
        setattr(self, attr, int(value))
        try:
            return original(self, *args, **kwargs)
        finally:
            setattr(self, attr, before)

    setattr(build_decode, _MARK, True)
    setattr(cls, method_name, build_decode)


def _wrap_impl_call(cls: Any, attr: str, knob: str, applier: Any, auto_value: int) -> None:
    """Per decode call: set the impl attribute ``attr`` (CUTLASS_MLA's split count) from the decode batch."""
    original = cls.forward_mqa

    @functools.wraps(original)
    def forward_mqa(self: Any, q: Any, *args: Any, **kwargs: Any) -> Any:
        value = None
        if applier.active:
            try:
                tokens = int((q[0] if isinstance(q, tuple) else q).shape[0])
                value = applier.per_batch(knob, tokens)
            except Exception as exc:  # noqa: BLE001
                applier.fail(exc, f"{cls.__name__}.forward_mqa")
        if value is None:
            return original(self, q, *args, **kwargs)
        before = getattr(self, attr)  # vLLM's own value (FORCE_NUM_KV_SPLITS or auto) comes back after the call
        setattr(self, attr, auto_value if value == "auto" else int(value))
        try:
            return original(self, q, *args, **kwargs)
        finally:
            setattr(self, attr, before)

    setattr(forward_mqa, _MARK, True)
    cls.forward_mqa = forward_mqa


def _wrap_triton(impl_cls: Any, kc: TritonKernelCall, applier: Any) -> None:
    """TRITON_MLA: remember the batch's max sequence length in forward_mqa; force the split count in the kernel
    call (decode tokens are the query's first dimension)."""
    module = importlib.import_module(kc.module)
    kernel = getattr(module, kc.function)
    original_forward = impl_cls.forward_mqa

    @functools.wraps(original_forward)
    def forward_mqa(self: Any, q: Any, kv_cache: Any, attn_metadata: Any, *args: Any, **kwargs: Any) -> Any:
        token = _CONTEXT.set(getattr(attn_metadata, "max_seq_len", None))
        try:
            return original_forward(self, q, kv_cache, attn_metadata, *args, **kwargs)
        finally:
            _CONTEXT.reset(token)

    @functools.wraps(kernel)
    def decode_attention_fwd(*args: Any, **kwargs: Any) -> Any:
        if applier.active:
            try:
                args = list(args)
                tokens = int(args[0].shape[0])
                heuristic = int(args[kc.splits_arg] if len(args) > kc.splits_arg else kwargs[kc.splits_kw])
                forced = applier.kernel_splits("num_kv_splits", tokens, _CONTEXT.get(), heuristic)
                force_splits(args, kwargs, kc, forced)
            except Exception as exc:  # noqa: BLE001
                applier.fail(exc, f"{kc.module}.{kc.function}")
        return kernel(*args, **kwargs)

    for fn in (forward_mqa, decode_attention_fwd):
        setattr(fn, _MARK, True)
    impl_cls.forward_mqa = forward_mqa
    setattr(module, kc.function, decode_attention_fwd)


def install(applier: Any, adapter: Adapter, backend: str) -> list[str]:
    """Patch the installed vLLM for ``backend``'s profile; returns what was patched. Idempotent per process.

    Every backend's builder is wrapped, so that a profile for another backend than the one vLLM selected is
    noticed (and refused, once) when that builder is created.
    """
    done: list[str] = []
    for name, facts in adapter.backends.items():
        try:
            cls = load(facts.builder_class)
        except Exception:  # noqa: BLE001 - a backend this build of vLLM cannot import is never selected either
            continue
        # its own __init__, not one inherited from an already wrapped parent (that one returns early for subclasses)
        if not getattr(cls.__dict__.get("__init__"), _MARK, False):
            _wrap_builder_init(cls, name, applier, adapter)
            done.append(f"{cls.__name__}.__init__")
    facts = adapter.backends[backend]
    rule_knobs = {r.knob for r in applier.profile.per_batch}
    builder_attrs = adapter.builder_attrs.get(backend, {})
    builder = load(facts.builder_class)
    for knob in sorted(rule_knobs & set(builder_attrs)):
        if not getattr(getattr(builder, adapter.builder_decode_method), _MARK, False):
            _wrap_build_decode(builder, builder_attrs[knob], knob, applier, adapter)
            done.append(f"{builder.__name__}.{adapter.builder_decode_method}")
    impl = load(facts.impl_class)
    impl_attrs = adapter.impl_attrs.get(backend, {})
    for knob in sorted(rule_knobs & set(impl_attrs)):
        if not getattr(impl.forward_mqa, _MARK, False):
            _wrap_impl_call(impl, impl_attrs[knob], knob, applier, adapter.cutlass_auto_splits)
            done.append(f"{impl.__name__}.forward_mqa")
    if backend == "TRITON_MLA" and "num_kv_splits" in rule_knobs and not getattr(impl.forward_mqa, _MARK, False):
        _wrap_triton(impl, adapter.triton_kernel, applier)
        done.append(f"{impl.__name__}.forward_mqa+{adapter.triton_kernel.function}")
    return done
