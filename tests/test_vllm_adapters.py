"""vLLM adapters: which family covers a version, each family's facts, and (where vLLM is installed) that the
names the installed vLLM's adapter gives really exist in it."""

from __future__ import annotations

import importlib
import inspect

import pytest

from mla_tune.errors import UsageError
from mla_tune.knobs import BACKENDS, KNOBS, PREFILL_BACKENDS
from mla_tune.space import CUDA_GRAPH_SUPPORT
from mla_tune.vllm_adapters import (
    FAMILIES,
    UnsupportedVllmError,
    adapter_for,
    default_adapter,
    parse_version,
    supported_versions,
)

SUPPORTED = "0.20.x, 0.21.x, 0.22.x-0.25.x, 0.26.x, 0.33.x"


@pytest.mark.parametrize(("version", "family"), [
    ("0.20.0", "0.20"), ("0.21.3", "0.21"), ("0.22.1", "0.22-0.25"), ("0.25.2", "0.22-0.25"),
    ("0.26.0", "0.26"), ("0.33.0", "0.33"), ("0.33.0rc1", "0.33"), ("v0.20", "0.20"), ("0.26.0+cu130", "0.26"),
])
def test_adapter_for_a_supported_version(version: str, family: str):
    assert adapter_for(version).family == family
    assert default_adapter(version).family == family


@pytest.mark.parametrize("version", ["0.19.0", "0.27.0", "0.30", "0.34.0", "1.0.0"])
def test_an_uncovered_version_is_one_line_naming_the_supported_ones(version: str):
    with pytest.raises(UnsupportedVllmError) as e:
        adapter_for(version)
    assert str(e.value) == f"vLLM {version} is not supported by this mla-tune; supported: {SUPPORTED}"
    assert isinstance(e.value, UsageError) and e.value.exit_code == 2


@pytest.mark.parametrize("version", ["garbage", "", "x.1", "latest"])
def test_an_unreadable_version_is_refused_too(version: str):
    with pytest.raises(UnsupportedVllmError) as e:
        adapter_for(version)
    assert str(e.value) == f"cannot read vLLM version {version!r}; supported: {SUPPORTED}"
    assert "\n" not in str(e.value)


def test_families_do_not_overlap_and_are_ordered():
    assert supported_versions() == SUPPORTED
    assert parse_version("0.26.3") == (0, 26)
    spans = [(a.first, a.last) for a in FAMILIES]
    assert all(first <= last for first, last in spans)
    assert all(spans[i][1] < spans[i + 1][0] for i in range(len(spans) - 1))


def test_prefill_settings_per_family():
    v20, v22, v33 = adapter_for("0.20.0"), adapter_for("0.22.1"), adapter_for("0.33.0")
    assert v20.prefill_settings["cudnn"]["use_cudnn_prefill"] is True
    assert v20.prefill_settings["fa2"] == {"flash_attn_version": 2, "disable_flashinfer_prefill": True,
                                           "use_cudnn_prefill": False,
                                           "use_trtllm_ragged_deepseek_prefill": False}
    assert v20.prefill_available() == PREFILL_BACKENDS
    for a in (v22, v33):  # 0.22 removed cuDNN prefill and its switches; mla_prefill_backend picks instead
        assert "cudnn" not in a.prefill_settings and "cudnn" not in a.prefill_available()
        for fields in a.prefill_settings.values():
            assert not {"use_cudnn_prefill", "disable_flashinfer_prefill",
                        "use_trtllm_ragged_deepseek_prefill"} & set(fields)
            assert "mla_prefill_backend" in fields
        assert a.prefill_settings["fa3"] == {"mla_prefill_backend": "FLASH_ATTN", "flash_attn_version": 3}
    assert v22.prefill_refusal("cudnn", "10.0") == "cudnn prefill does not exist in vLLM 0.22-0.25"
    assert v20.prefill_refusal("cudnn", "9.0") == \
        "cudnn prefill needs compute capability 10.x in vLLM 0.20 (this GPU: 9.0)"
    assert v20.prefill_refusal("cudnn", "10.0") is None and v20.prefill_refusal("auto", "9.0") is None
    assert v22.prefill_refusal("fa3", "9.0") is None


@pytest.mark.parametrize("a", FAMILIES, ids=lambda a: a.family)
def test_capability_refusal(a):
    for backend in ("CUTLASS_MLA", "FLASHINFER_MLA"):
        assert a.capability_refusal(backend, "9.0") == \
            f"{backend} needs compute capability 10.x (this GPU: 9.0)"
        assert a.capability_refusal(backend, "10.0") is None
    assert a.capability_refusal("FLASH_ATTN_MLA", "9.0") is None
    assert a.capability_refusal("FLASH_ATTN_MLA", "8.0") == "FLASH_ATTN_MLA needs compute capability 9.x " \
                                                           "(this GPU: 8.0)"
    assert a.capability_refusal("TRITON_MLA", "8.0") is None  # any CUDA GPU
    assert a.capability_refusal("NOPE_MLA", "9.0") == f"NOPE_MLA does not exist in vLLM {a.family}"


@pytest.mark.parametrize("a", FAMILIES, ids=lambda a: a.family)
def test_every_family_has_facts_for_every_backend(a):
    assert set(a.backends) == set(BACKENDS)
    for name, facts in a.backends.items():
        assert facts.name == name
        assert facts.cuda_graph_support in CUDA_GRAPH_SUPPORT
        for path in (facts.builder_class, facts.impl_class):
            module, _, cls = path.partition(":")
            assert module.startswith("vllm.") and cls.isidentifier(), path
    assert a.common_builder.partition(":")[2] == "MLACommonMetadataBuilder"
    assert a.builder_decode_method == "_build_decode"
    kc = a.triton_kernel
    assert (kc.function, kc.logits_arg, kc.logits_kw, kc.splits_arg, kc.splits_kw) == \
        ("decode_attention_fwd", 7, "attn_logits", 8, "num_kv_splits")
    # attributes the plugin sets belong to knobs of that backend
    for table in (a.builder_attrs, a.impl_attrs):
        for backend, attrs in table.items():
            assert backend in BACKENDS
            for knob_name in attrs:
                assert backend in next(k for k in KNOBS if k.name == knob_name).backends
    assert a.cutlass_auto_splits == -1
    assert a.triton_auto_splits(4096, 132) == 8 and a.triton_auto_splits(100, 132) == 1
    assert a.triton_auto_splits(1 << 20, 10) == 20  # capped by occupancy x SMs


def test_families_differ_where_vllm_did():
    v20, v21, v22, v26, v33 = (adapter_for(v) for v in ("0.20.0", "0.21.0", "0.22.0", "0.26.0", "0.33.0"))
    for a in (v20, v21):  # TRITON_MLA on the common builder, never in a full graph
        assert a.backends["TRITON_MLA"].builder_class == a.common_builder
        assert a.backends["TRITON_MLA"].cuda_graph_support == "never"
    assert v21.prefill_api == "backend_object" and "cudnn" not in v21.prefill_settings
    assert v22.backends["TRITON_MLA"].cuda_graph_support == "uniform_batch"
    assert v26.backends["TRITON_MLA"].builder_class.endswith("triton_mla:TritonMLAMetadataBuilder")
    assert v26.backends["TRITON_MLA"].cuda_graph_support == "uniform_single_token_decode"
    assert v33.backends["TRITON_MLA"].cuda_graph_support == "uniform_batch"
    assert v33.backends["FLASHINFER_MLA"].cuda_graph_support == "always"
    assert v33.torch == "2.14" and v33.gpu_validated == ""
    assert v21.gpu_validated == v22.gpu_validated == "" and v26.gpu_validated.startswith("0.26.0")
    # the TRITON kernel's int32 KV offsets: through 0.24, fixed in 0.25
    assert v22.triton_int32_kv_offsets((0, 24)) and not v22.triton_int32_kv_offsets((0, 25))
    assert not v26.triton_int32_kv_offsets((0, 26))


def test_family_spans():
    from mla_tune.vllm_adapters import family_span, family_within

    assert family_span("0.22-0.25") == ((0, 22), (0, 25)) and family_span("0.26") == ((0, 26), (0, 26))
    assert family_within("0.26", "0.21-0.26") and family_within("0.22-0.25", "0.21-0.26")
    assert not family_within("0.21-0.26", "0.26") and not family_within("0.33", "0.21-0.26")
    assert family_within("odd", "odd") and not family_within("odd", "0.26")
    for a in FAMILIES:
        assert family_span(a.family) == (a.first, a.last)


@pytest.mark.parametrize("a", FAMILIES, ids=lambda a: a.family)
def test_global_setting_lookups(a):
    cap = a.global_setting("max_num_splits", "FLASH_ATTN_MLA")
    assert (cap.section, cap.key) == ("attention_config", "flash_attn_max_num_splits_for_cuda_graph")
    assert a.global_setting("max_num_splits", "FLASHMLA") is None
    graphs = a.global_setting("cuda_graphs", "FLASHMLA")  # "*": every backend
    assert graphs is a.global_setting("cuda_graphs", "CUTLASS_MLA")
    assert (graphs.section, graphs.key) == ("compilation_config", "cudagraph_mode")
    assert graphs.spell(True) == "FULL_AND_PIECEWISE" and graphs.spell(False) == "PIECEWISE"
    splits = a.global_setting("num_kv_splits", "CUTLASS_MLA")
    assert (splits.section, splits.key, splits.skip) == ("env", "FORCE_NUM_KV_SPLITS", ("auto",))
    assert splits.spell(4) == 4
    # only the plugin can set these
    assert a.global_setting("num_kv_splits", "TRITON_MLA") is None
    assert a.global_setting("reorder_batch_threshold", "FLASHMLA") is None
    assert a.global_setting("no_such_knob", "FLASHMLA") is None


def _load(path: str):
    module, _, name = path.partition(":")
    mod = importlib.import_module(module)
    assert hasattr(mod, name), f"{module} has no {name}"
    return getattr(mod, name)


def test_the_installed_vllm_has_every_name_its_adapter_gives():
    """Runs where vLLM is installed (the GPU machine); catches a vLLM release that renamed something."""
    pytest.importorskip("vllm")
    from mla_tune.vllm_adapters import installed_adapter

    a = installed_adapter()
    for facts in a.backends.values():
        _load(facts.builder_class)
        _load(facts.impl_class)
    common = _load(a.common_builder)
    kernel_module = importlib.import_module(a.triton_kernel.module)
    kernel = getattr(kernel_module, a.triton_kernel.function)
    params = list(inspect.signature(kernel).parameters)
    assert params[a.triton_kernel.logits_arg] == a.triton_kernel.logits_kw
    assert params[a.triton_kernel.splits_arg] == a.triton_kernel.splits_kw
    fa_builder = _load(a.backends["FLASH_ATTN_MLA"].builder_class)
    assert issubclass(fa_builder, common)
    method = getattr(fa_builder, a.builder_decode_method)
    assert "num_decode_tokens" in inspect.signature(method).parameters
    for backend in ("CUTLASS_MLA", "TRITON_MLA"):  # the plugin wraps their forward_mqa
        impl = _load(a.backends[backend].impl_class)
        assert callable(getattr(impl, "forward_mqa", None)), impl
    # the builder attributes knobs set, the flags vLLM checks before using them, where metadata reports them
    for backend, attrs in a.builder_attrs.items():
        builder = _load(a.backends[backend].builder_class)
        init = inspect.getsource(builder.__init__)
        common_init = inspect.getsource(common.__init__)
        for attr in attrs.values():  # a class attribute, or one the builders' __init__ sets
            assert hasattr(builder, attr) or f"self.{attr}" in init + common_init, (backend, attr)
            for flag in a.builder_attr_requires.get(attr, ()):
                assert f"self.{flag}" in init, (backend, flag)
    for backend, reports in a.metadata_reports.items():
        module = importlib.import_module(a.backends[backend].builder_class.partition(":")[0])
        for path in reports.values():
            assert path.rpartition(".")[2] in inspect.getsource(module), (backend, path)


@pytest.mark.parametrize("version, cc, kv, expected", [
    ("0.20.0", "9.0", "auto", "FLASH_ATTN_MLA"), ("0.20.0", "9.0", "fp8", "FLASHMLA"),
    ("0.20.0", "10.0", "auto", "FLASHINFER_MLA"), ("0.20.0", "8.0", "auto", "TRITON_MLA"),
    ("0.26.0", "9.0", "auto", "FLASH_ATTN_MLA"), ("0.26.0", "10.0", "auto", "FLASHINFER_MLA"),
    ("0.26.0", "12.0", "auto", "TRITON_MLA"), ("0.33.0", "9.0", "fp8", "FLASHMLA"),
])
def test_the_backend_vllm_picks_unasked_follows_its_priority_list(version, cc, kv, expected):
    # read from vLLM's platforms/cuda.py _get_backend_priorities of each release (see the adapters)
    assert adapter_for(version).default_decode_backend(cc, kv) == expected


def test_a_backend_mla_tune_does_not_model_ahead_in_vllms_list_leaves_the_default_unknown():
    from dataclasses import replace

    a = adapter_for("0.26.0")
    assert "TOKENSPEED_MLA" not in a.backends and a.mla_priority[10][1] == "TOKENSPEED_MLA"
    # where FLASHINFER_MLA cannot run, vLLM would try TOKENSPEED_MLA next: no baseline is claimed
    no_flashinfer = replace(a, backends={k: v for k, v in a.backends.items() if k != "FLASHINFER_MLA"})
    assert no_flashinfer.default_decode_backend("10.0") is None


@pytest.mark.parametrize("version, spec, refused", [
    # 256 x 16k tokens x 576 = 2.4e9 elements: the H200 runs of 0.20 faulted on exactly these shapes
    ("0.20.0", "256q1s16k", True), ("0.20.0", "64q1s64k", True), ("0.24.1", "256q1s16k", True),
    # 128 x 16k and 32 x 64k (1.2e9 elements) ran on the H200; 0.25 cast the page number to int64
    ("0.20.0", "128q1s16k", False), ("0.20.0", "32q1s64k", False), ("0.25.0", "256q1s16k", False),
    ("0.26.0", "256q1s64k", False), ("0.33.0", "256q1s64k", False),
])
def test_triton_mla_is_refused_where_its_int32_kv_offsets_would_wrap(version, spec, refused):
    from mla_tune.batch_spec import parse
    from mla_tune.runners._vllm_plan import kv_offset_refusal

    requests = parse(spec).requests
    reason = kv_offset_refusal("TRITON_MLA", requests, 64, 576, version)
    assert (reason is not None) == refused
    if refused:
        assert "int32" in reason and "0.25" in reason and "illegal memory access" not in reason  # not "poisoned"
    assert kv_offset_refusal("FLASHMLA", requests, 64, 576, version) is None
    assert kv_offset_refusal("TRITON_MLA", requests, 64, 576, None) is None  # no vLLM here: nothing to refuse


def test_the_int32_boundary_is_two_to_the_31_elements():
    a = adapter_for("0.20.0")
    assert a.triton_kv_offset_refusal((0, 20), 2**31) is None  # the last offset is 2**31 - 1
    assert a.triton_kv_offset_refusal((0, 20), 2**31 + 1) is not None



@pytest.mark.parametrize("a", FAMILIES, ids=lambda a: a.family)
def test_a_family_is_one_module_named_for_its_first_release(a):
    """Adding a vLLM family is a module ``v0_<first minor>.py`` with its ``ADAPTER`` plus its line in FAMILIES."""
    module = importlib.import_module(f"mla_tune.vllm_adapters.v{a.first[0]}_{a.first[1]}")
    assert module.ADAPTER is a
