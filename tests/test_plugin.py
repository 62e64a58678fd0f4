"""mla-tune's vLLM plugin: the entry point, ``register``, the ``Applier``'s decisions, and the patches against
fake vLLM 0.20 modules (no vLLM, no torch: the fakes are plain classes, tensors are numpy behind a small shim)."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import logging
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from mla_tune.errors import one_line
from mla_tune.serving import Match, PerBatchRule, Point, Profile, RunningEngine, plugin
from mla_tune.tables.export import dump_yaml
from mla_tune.vllm_adapters import _patches, adapter_for
from mla_tune.vllm_adapters._patches import force_splits

V20 = adapter_for("0.20.0")
KC = V20.triton_kernel
MLA = "vllm.v1.attention.backends.mla"
CAPTURE = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
FA_MATCH = Match("H100", "9.0", "FLASH_ATTN_MLA", 128, 512, 64, "auto", "0.20")
CAP_RULE = PerBatchRule("max_num_splits", (Point(8, 16, None, "8q1s4k"), Point(128, 32, None, "128q1s4k"),
                                           Point(256, 1, None, "256q1s4k")))
FA_PROFILE = Profile(FA_MATCH, (CAP_RULE,), (("reorder_batch_threshold", 64),))


def engine_of(match: Match, **changes) -> RunningEngine:
    return dataclasses.replace(RunningEngine(**dataclasses.asdict(match)), **changes)


# -- logs --------------------------------------------------------------------------------------------------
class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def at(self, level: int) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno == level]


@pytest.fixture
def logs():
    handler, level = _Records(), plugin.log.level
    plugin.log.addHandler(handler)
    plugin.log.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        plugin.log.removeHandler(handler)
        plugin.log.setLevel(level)


# -- (a) the entry point -------------------------------------------------------------------------------------
def test_the_vllm_entry_point_is_register():
    eps = [ep for ep in importlib.metadata.entry_points(group="vllm.general_plugins") if ep.name == "mla_tune"]
    assert len(eps) == 1, "re-run `pip install -e . --no-deps` if pyproject.toml's entry points changed"
    assert eps[0].value == "mla_tune.serving.plugin:register"
    assert eps[0].load() is plugin.register


# -- (b) register ----------------------------------------------------------------------------------------------
@pytest.fixture
def no_install(monkeypatch: pytest.MonkeyPatch) -> list:
    calls: list = []
    monkeypatch.setattr(_patches, "install", lambda *a: calls.append(a) or [])
    return calls


def test_register_without_a_profile_does_nothing(monkeypatch, logs, no_install):
    for value in (None, "", "   "):
        if value is None:
            monkeypatch.delenv(plugin.ENV, raising=False)
        else:
            monkeypatch.setenv(plugin.ENV, value)
        plugin.register()
    assert no_install == [] and logs.records == []


@pytest.mark.parametrize("content", [None, "kind: x\n", "schema_version: 1\nkind: mla-tune/serving-profile\n"])
def test_register_with_a_bad_profile_warns_once_and_returns(tmp_path, monkeypatch, logs, no_install, content):
    path = tmp_path / "profile.yaml"
    if content is not None:
        path.write_text(content)
    monkeypatch.setenv(plugin.ENV, str(path))
    plugin.register()
    warnings = logs.at(logging.WARNING)
    assert len(warnings) == 1 and no_install == []
    assert warnings[0].startswith(f"mla-tune: profile {path} not applied: DataFileError: {path}")
    assert warnings[0].endswith("vLLM's defaults are kept") and "\n" not in warnings[0]


@pytest.mark.parametrize("context", [10**400, 10**30], ids=["400 digits", "10^30"])
def test_a_profile_with_a_huge_context_is_refused_before_the_decision_code_can_overflow(tmp_path, monkeypatch, logs,
                                                                                       no_install, context):
    """It used to load and then overflow in ``PerBatchRule.select`` (int / int too large for a float) at a decode
    batch; now the loader bounds every context, and the plugin logs one line and keeps vLLM's defaults."""
    data = Profile(dataclasses.replace(FA_MATCH, backend="TRITON_MLA"), (PerBatchRule("num_kv_splits", (
        Point(8, 4, 1024), Point(8, 16, context))),)).to_dict()
    path = tmp_path / "profile.yaml"
    path.write_text(dump_yaml(data))
    monkeypatch.setenv(plugin.ENV, str(path))
    plugin.register()
    (warning,) = logs.at(logging.WARNING)
    assert f"not applied: DataFileError: {path}: per_batch.num_kv_splits[1].context: is " in warning
    assert "expected an integer in [1, 1048576]" in warning and no_install == []


def _profile_file(tmp_path: Path, profile: Profile = FA_PROFILE) -> Path:
    path = tmp_path / "profile.yaml"
    path.write_text(dump_yaml(profile.to_dict()))
    return path


def test_register_without_vllm_warns_and_returns(tmp_path, monkeypatch, logs, no_install):
    monkeypatch.setattr("mla_tune.vllm_adapters.installed_version", lambda: None)
    monkeypatch.setenv(plugin.ENV, str(_profile_file(tmp_path)))
    plugin.register()
    (warning,) = logs.at(logging.WARNING)
    assert "not applied: UnsupportedVllmError: vLLM is not installed here" in warning and no_install == []


def test_register_with_an_unsupported_vllm_warns_and_returns(tmp_path, monkeypatch, logs, no_install):
    monkeypatch.setattr("mla_tune.vllm_adapters.installed_version", lambda: "0.29.1")
    monkeypatch.setenv(plugin.ENV, str(_profile_file(tmp_path)))
    plugin.register()
    (warning,) = logs.at(logging.WARNING)
    assert "vLLM 0.29.1 is not supported" in warning and no_install == []


def test_register_never_raises_whatever_install_meets(tmp_path, monkeypatch, logs):
    monkeypatch.setattr("mla_tune.vllm_adapters.installed_version", lambda: "0.20.0")

    def boom(*a):
        raise ImportError("No module named 'vllm.v1'")

    monkeypatch.setattr(_patches, "install", boom)
    monkeypatch.setenv(plugin.ENV, str(_profile_file(tmp_path)))
    plugin.register()
    (warning,) = logs.at(logging.WARNING)
    assert "ImportError: No module named 'vllm.v1'" in warning


# -- (c) the Applier -------------------------------------------------------------------------------------------
def test_a_matching_engine_activates_the_profile_and_logs_once(logs):
    a = plugin.Applier(FA_PROFILE, V20, "p.yaml")
    assert a.active is None and a.per_batch("max_num_splits", 256) is None  # nothing before the engine is seen
    assert a.on_engine(engine_of(FA_MATCH)) is True
    assert a.on_engine(engine_of(FA_MATCH)) is True and a.active is True
    (info,) = [m for m in logs.at(logging.INFO) if "applied" in m]
    assert info.startswith("mla-tune: profile p.yaml applied to FLASH_ATTN_MLA on H100 (vLLM 0.20): ")
    assert "reorder_batch_threshold=64" in info and "max_num_splits per decode tokens" in info
    assert logs.at(logging.WARNING) == []


@pytest.mark.parametrize(("field", "other"), [
    ("gpu", "H200"), ("compute_capability", "9.1"), ("num_q_heads", 16),
    ("kv_lora_rank", 256), ("qk_rope_head_dim", 32), ("kv_cache_dtype", "fp8"), ("vllm", "0.22-0.26"),
])
def test_each_mismatch_leaves_the_profile_inactive(logs, field: str, other):
    a = plugin.Applier(FA_PROFILE, V20, "p.yaml")
    assert a.on_engine(engine_of(FA_MATCH, **{field: other})) is False
    assert a.on_engine(engine_of(FA_MATCH)) is False  # decided once, at the first builder
    (warning,) = logs.at(logging.WARNING)
    assert f"({field}: profile {getattr(FA_MATCH, field)}, engine {other})" in warning
    assert "vLLM's defaults are kept" in warning
    assert a.per_batch("max_num_splits", 256) is None and a.kernel_splits("max_num_splits", 256, None, 7) == 7
    assert not [m for m in logs.at(logging.INFO) if "applied" in m]


def test_a_builder_of_another_backend_is_left_alone_without_deciding(logs):
    a = plugin.Applier(FA_PROFILE, V20, "p.yaml")
    assert a.on_engine(engine_of(FA_MATCH, backend="FLASHMLA")) is False  # e.g. a draft model's builder
    assert a.on_engine(engine_of(FA_MATCH, backend="FLASHMLA")) is False
    (warning,) = logs.at(logging.WARNING)  # once per foreign backend
    assert "profile p.yaml is for FLASH_ATTN_MLA; this engine built a FLASHMLA metadata builder" in warning
    assert a.active is None and a.per_batch("max_num_splits", 256) is None
    assert a.on_engine(engine_of(FA_MATCH)) is True and a.per_batch("max_num_splits", 256) == 1


def test_per_batch_picks_the_nearest_point_and_logs_each_choice_once(logs):
    a = plugin.Applier(FA_PROFILE, V20)
    a.on_engine(engine_of(FA_MATCH))
    # 68 and 192 lie halfway between two points: the smaller one's value
    assert [a.per_batch("max_num_splits", n) for n in (1, 8, 60, 68, 69, 128, 192, 193, 256, 4096)] == \
        [16, 16, 16, 16, 32, 32, 32, 1, 1, 1]
    assert a.per_batch("max_num_splits", 200) == 1
    assert len([m for m in logs.at(logging.INFO) if "max_num_splits=1 for decode batches of 200 tokens" in m]) == 1
    assert a.per_batch("num_kv_splits", 8) is None  # no rule for it
    assert a.kernel_splits("max_num_splits", 8, None, heuristic=4) == 16


def test_kernel_splits_keeps_the_heuristic_where_the_profile_says_auto():
    rule = PerBatchRule("num_kv_splits", (Point(8, "auto", 1024), Point(8, 2, 16384)))
    a = plugin.Applier(Profile(dataclasses.replace(FA_MATCH, backend="TRITON_MLA"), (rule,)), V20)
    a.on_engine(engine_of(a.profile.match))
    assert a.kernel_splits("num_kv_splits", 8, 2000, heuristic=4) == 4
    assert a.kernel_splits("num_kv_splits", 8, 20000, heuristic=4) == 2
    assert a.kernel_splits("num_kv_splits", 8, None, heuristic=4) == 4  # no context: the first point


def test_per_batch_with_contexts_logs_once_per_point(logs):
    rule = PerBatchRule("num_kv_splits", (Point(8, 4, 1024), Point(8, 16, 16384)))
    a = plugin.Applier(Profile(dataclasses.replace(FA_MATCH, backend="TRITON_MLA"), (rule,)), V20)
    a.on_engine(engine_of(a.profile.match))
    assert {a.per_batch("num_kv_splits", 8, ctx) for ctx in range(1000, 1100)} == {4}
    assert len([m for m in logs.at(logging.INFO) if "num_kv_splits=4" in m]) == 1


def test_a_context_far_from_every_measured_one_keeps_vllms_value(logs):
    """A profile measured at 4k applied at 32k: the e2e run on the H200 did that (nearest batch's split count)."""
    rule = PerBatchRule("num_kv_splits", (Point(8, 4, 4096), Point(32, 1, 4096)))
    a = plugin.Applier(Profile(dataclasses.replace(FA_MATCH, backend="TRITON_MLA"), (rule,)), V20)
    a.on_engine(engine_of(a.profile.match))
    assert a.per_batch("num_kv_splits", 32, 8000) == 1  # within 2x of 4096
    assert {a.per_batch("num_kv_splits", n, 32768) for n in (8, 32, 40)} == {None}
    assert a.kernel_splits("num_kv_splits", 32, 32768, heuristic=16) == 16
    left = [m for m in logs.at(logging.INFO) if "left to vLLM" in m]
    assert left == ["mla-tune: num_kv_splits left to vLLM at context about 32768: measured only at 4096"]


def test_builder_settings_map_at_build_knobs_to_the_adapters_attributes():
    profile = Profile(dataclasses.replace(FA_MATCH, backend="FLASHMLA"), (), (("reorder_batch_threshold", 64),))
    a = plugin.Applier(profile, V20)
    assert a.builder_settings("FLASHMLA") == {"reorder_batch_threshold": 64}
    assert a.builder_settings("TRITON_MLA") == {}  # no builder attribute for it in this vLLM
    assert plugin.Applier(Profile(FA_MATCH), V20).builder_settings("FLASH_ATTN_MLA") == {}
    renamed = dataclasses.replace(V20, builder_attrs={"FLASHMLA": {"reorder_batch_threshold": "_reorder"}})
    assert plugin.Applier(profile, renamed).builder_settings("FLASHMLA") == {"_reorder": 64}


def test_fail_disables_and_warns_once(logs):
    a = plugin.Applier(FA_PROFILE, V20, "p.yaml")
    a.on_engine(engine_of(FA_MATCH))
    a.fail(ValueError("bad\nthing"), "X.y")
    a.fail(ValueError("again"), "X.y")
    assert a.active is False and a.per_batch("max_num_splits", 256) is None
    (warning,) = logs.at(logging.WARNING)
    assert warning == "mla-tune: profile p.yaml disabled at X.y (ValueError: bad thing); vLLM's defaults are kept"
    assert one_line("x" * 400).endswith("...") and len(one_line("x" * 400)) == 300


# -- (d) the patches, against fake vLLM 0.20 modules ------------------------------------------------------------
class Tensor:
    """Enough of torch.Tensor for ``force_splits``: numpy underneath, views share memory like torch's."""

    def __init__(self, array: np.ndarray) -> None:
        self.a = array

    @property
    def shape(self) -> tuple[int, ...]:
        return self.a.shape

    def is_contiguous(self) -> bool:
        return bool(self.a.flags.c_contiguous)

    def numel(self) -> int:
        return int(self.a.size)

    def view(self, *shape: int) -> Tensor:
        assert self.is_contiguous()
        view = self.a.view()
        view.shape = shape  # raises where numpy would have to copy, as torch's view does
        return Tensor(view)

    def __getitem__(self, index) -> Tensor:
        return Tensor(self.a[index])

    def new_empty(self, shape) -> Tensor:
        return Tensor(np.empty(shape, dtype=self.a.dtype))


COMMON_SRC = '''
class MLACommonMetadataBuilder:
    reorder_batch_threshold = 1

    def __init__(self, kv_cache_spec, layer_names, vllm_config, device):
        self.device = device
        self.compilation_config = vllm_config.compilation_config
        self.decoded = []

    def _build_decode(self, block_table_tensor, seq_lens_device, max_seq_len, query_start_loc_cpu,
                      query_start_loc_device, num_decode_tokens, dcp_tot_seq_lens_device):
        self.decoded.append(num_decode_tokens)
        return num_decode_tokens
'''

BUILDERS_SRC = '''
class {cls}MetadataBuilder(MLACommonMetadataBuilder):
    reorder_batch_threshold = {threshold}

    def __init__(self, kv_cache_spec, layer_names, vllm_config, device):
        super().__init__(kv_cache_spec, layer_names, vllm_config, device)
        self.max_num_splits = 32  # vLLM's flash_attn_max_num_splits_for_cuda_graph
        self.caps = []

    def _build_decode(self, block_table_tensor, seq_lens_device, max_seq_len, query_start_loc_cpu,
                      query_start_loc_device, num_decode_tokens, dcp_tot_seq_lens_device):
        self.caps.append((num_decode_tokens, self.max_num_splits))
        return self.max_num_splits


class {cls}Impl:
    def __init__(self):
        self._num_kv_splits = -1  # FORCE_NUM_KV_SPLITS unset: the kernel picks
        self.used = []

    def forward_mqa(self, q, kv_c_and_k_pe_cache, attn_metadata, layer):
        self.used.append(self._num_kv_splits)
        return self._num_kv_splits
'''

TRITON_SRC = '''
CALLS = []


def decode_attention_fwd(q, k_buffer, v_buffer, o, lse, req_to_token, b_seq_len, attn_logits, num_kv_splits,
                         sm_scale, page_size=1, logit_cap=0.0):
    CALLS.append((q.shape[0], attn_logits, num_kv_splits))


class TritonMLAImpl:
    def __init__(self, workspace):
        self.workspace = workspace  # a reserved buffer vLLM hands the kernel its scratch from

    def forward_mqa(self, q, kv_c_and_k_pe_cache, attn_metadata, layer):
        b, splits = q.shape[0], attn_metadata.heuristic_splits
        need = b * 4 * splits * 513
        logits = self.workspace[:need].view(b, 4, splits, 513)
        decode_attention_fwd(q, None, None, None, None, None, None, logits, splits, 0.1, page_size=64)
'''


def _module(monkeypatch: pytest.MonkeyPatch, name: str, source: str = "", **names) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(names)
    exec(compile(source, f"<fake {name}>", "exec"), module.__dict__)  # noqa: S102 - test source above
    monkeypatch.setitem(sys.modules, name, module)
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)
    return module


@pytest.fixture
def vllm(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """Fake vLLM 0.20 modules, fresh per test (install patches classes in place). FLASHINFER_MLA's module is
    missing on purpose: a backend this build cannot import is skipped."""
    for pkg in ("vllm", "vllm.v1", "vllm.v1.attention", "vllm.v1.attention.backends", MLA, "vllm.model_executor",
                "vllm.model_executor.layers", "vllm.model_executor.layers.attention"):
        _module(monkeypatch, pkg)
    common = _module(monkeypatch, "vllm.model_executor.layers.attention.mla_attention", COMMON_SRC)
    base = {"MLACommonMetadataBuilder": common.MLACommonMetadataBuilder}
    fa = _module(monkeypatch, f"{MLA}.flashattn_mla", BUILDERS_SRC.format(cls="FlashAttnMLA", threshold=512), **base)
    flashmla = _module(monkeypatch, f"{MLA}.flashmla", BUILDERS_SRC.format(cls="FlashMLA", threshold=128), **base)
    cutlass = _module(monkeypatch, f"{MLA}.cutlass_mla", BUILDERS_SRC.format(cls="CutlassMLA", threshold=1),
                      **base)
    triton = _module(monkeypatch, f"{MLA}.triton_mla", TRITON_SRC)
    return SimpleNamespace(common=common.MLACommonMetadataBuilder, fa=fa.FlashAttnMLAMetadataBuilder,
                           flashmla=flashmla.FlashMLAMetadataBuilder, cutlass=cutlass.CutlassMLAMetadataBuilder,
                           cutlass_impl=cutlass.CutlassMLAImpl, triton_module=triton,
                           triton_impl=triton.TritonMLAImpl)


@pytest.fixture
def running(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """The engine the patched builders report (torch-free); ``running.engine`` may be changed by a test."""
    state = SimpleNamespace(engine=engine_of(FA_MATCH), seen=[])

    def facts(builder, backend, vllm_config, kv_cache_spec, adapter):
        state.seen.append(backend)
        return dataclasses.replace(state.engine, backend=backend)

    monkeypatch.setattr(_patches, "_engine_facts", facts)
    return state


CONFIG = SimpleNamespace(compilation_config=SimpleNamespace(cudagraph_capture_sizes=CAPTURE))


def new(builder_cls):
    return builder_cls(None, ["model.layers.0.self_attn"], CONFIG, "cuda:0")


def decode(builder, tokens: int, keyword: bool = False):
    if keyword:
        return builder._build_decode(block_table_tensor=None, seq_lens_device=None, max_seq_len=4096,
                                     query_start_loc_cpu=None, query_start_loc_device=None,
                                     num_decode_tokens=tokens, dcp_tot_seq_lens_device=None)
    return builder._build_decode(None, None, 4096, None, None, tokens, None)


def install(profile: Profile, adapter=V20) -> tuple[plugin.Applier, list[str]]:
    applier = plugin.Applier(profile, adapter, "p.yaml")
    return applier, _patches.install(applier, adapter, profile.match.backend)


def test_install_wraps_every_importable_builder_and_the_decode_hook(vllm, running):
    _, done = install(FA_PROFILE)
    # FlashInfer's module is not faked: only a machine with a real vLLM (the GPU machine) imports it
    done = [d for d in done if d != "FlashInferMLAMetadataBuilder.__init__"]
    assert done == ["CutlassMLAMetadataBuilder.__init__", "FlashMLAMetadataBuilder.__init__",
                    "FlashAttnMLAMetadataBuilder.__init__", "MLACommonMetadataBuilder.__init__",
                    "FlashAttnMLAMetadataBuilder._build_decode"]


def test_fa_split_cap_is_set_per_padded_batch_and_restored(vllm, running, logs):
    applier, _ = install(FA_PROFILE)
    b = new(vllm.fa)
    assert applier.active is True and running.seen == ["FLASH_ATTN_MLA"]  # the common __init__ does not ask
    assert b.reorder_batch_threshold == 64  # at build
    assert vllm.fa.reorder_batch_threshold == 512  # on the instance only
    for tokens in (1, 8, 100, 129, 256, 300):
        decode(b, tokens)
        assert b.max_num_splits == 32  # vLLM's own value outside the call
    # 100 runs in the 128 graph (cap 32), 129 in the 256 graph (cap 1, though 128 is nearer to 129),
    # 300 in the 512 graph: nearest point 256 (cap 1)
    assert b.caps == [(1, 16), (8, 16), (100, 32), (129, 1), (256, 1), (300, 1)]
    decode(b, 128, keyword=True)
    assert b.caps[-1] == (128, 32)
    assert sum("applied" in m for m in logs.at(logging.INFO)) == 1


def test_capture_and_replay_of_one_size_see_the_same_cap(vllm, running):
    install(FA_PROFILE)
    b = new(vllm.fa)
    decode(b, 256)  # capture of the 256-token graph
    for tokens in (130, 192, 255, 256):  # replays padded into it
        decode(b, tokens)
    assert {cap for _, cap in b.caps} == {1}


def test_a_mismatching_profile_changes_nothing(vllm, running, logs):
    running.engine = engine_of(FA_MATCH, gpu="H200")
    applier, _ = install(FA_PROFILE)
    b = new(vllm.fa)
    assert applier.active is False and b.reorder_batch_threshold == 512
    for tokens in (8, 256):
        decode(b, tokens)
    assert b.caps == [(8, 32), (256, 32)]
    (warning,) = logs.at(logging.WARNING)
    assert "gpu: profile H100, engine H200" in warning


def test_a_profile_for_another_backend_is_refused_at_the_builder_vllm_creates(vllm, running, logs):
    applier, _ = install(FA_PROFILE)
    b = new(vllm.flashmla)  # vLLM picked FLASHMLA; the profile is for FLASH_ATTN_MLA
    assert not applier.active and b.reorder_batch_threshold == 128
    assert "profile p.yaml is for FLASH_ATTN_MLA; this engine built a FLASHMLA metadata builder, which keeps " \
        "vLLM's defaults" in logs.at(logging.WARNING)[0]


def test_an_exception_in_a_wrapper_disables_the_profile_and_vllm_runs_on(vllm, running, monkeypatch, logs):
    applier, _ = install(FA_PROFILE)
    b = new(vllm.fa)
    decode(b, 256)

    def boom(*a, **k):
        raise RuntimeError("surprise")

    monkeypatch.setattr(applier, "per_batch", boom)
    assert decode(b, 256) == 32  # the original ran, with vLLM's cap
    assert decode(b, 8) == 32
    assert b.caps == [(256, 1), (256, 32), (8, 32)] and b.max_num_splits == 32 and applier.active is False
    (warning,) = logs.at(logging.WARNING)
    assert "disabled at FlashAttnMLAMetadataBuilder._build_decode (RuntimeError: surprise)" in warning


def test_an_exception_while_reading_the_engine_keeps_the_builder(vllm, running, monkeypatch, logs):
    applier, _ = install(FA_PROFILE)

    def broken(*a):
        raise AttributeError("'ModelConfig' object has no attribute 'hf_text_config'")

    monkeypatch.setattr(_patches, "_engine_facts", broken)
    b = new(vllm.fa)
    assert b.reorder_batch_threshold == 512 and b.max_num_splits == 32 and applier.active is False
    decode(b, 256)
    assert b.caps == [(256, 32)]
    assert "disabled at FlashAttnMLAMetadataBuilder.__init__ (AttributeError:" in logs.at(logging.WARNING)[0]


def test_install_is_idempotent(vllm, running):
    applier, done = install(FA_PROFILE)
    assert done and _patches.install(applier, V20, "FLASH_ATTN_MLA") == []
    for cls in (vllm.fa, vllm.common):  # one wrapper each, around vLLM's own function
        assert not getattr(cls.__init__.__wrapped__, "_mla_tune_patched", False)
    assert not getattr(vllm.fa._build_decode.__wrapped__, "_mla_tune_patched", False)
    b = new(vllm.fa)
    decode(b, 256)
    assert b.caps == [(256, 1)]


def test_a_builder_of_another_backend_keeps_vllms_values(vllm, running):
    profile = Profile(dataclasses.replace(FA_MATCH, backend="FLASHMLA"), (), (("reorder_batch_threshold", 64),))
    install(profile)
    assert new(vllm.flashmla).reorder_batch_threshold == 64
    assert new(vllm.fa).reorder_batch_threshold == 512


def test_register_end_to_end_with_a_valid_profile(tmp_path, monkeypatch, vllm, running, logs):
    monkeypatch.setattr("mla_tune.vllm_adapters.installed_version", lambda: "0.20.3")
    path = _profile_file(tmp_path)
    monkeypatch.setenv(plugin.ENV, str(path))
    plugin.register()
    (loaded,) = [m for m in logs.at(logging.INFO) if "plugin loaded" in m]
    assert loaded.startswith(f"mla-tune: plugin loaded with profile {path} (vLLM 0.20; patched ")
    assert "FlashAttnMLAMetadataBuilder._build_decode" in loaded
    b = new(vllm.fa)
    decode(b, 200)
    assert b.reorder_batch_threshold == 64 and b.caps == [(200, 1)] and logs.at(logging.WARNING) == []


CUTLASS_MATCH = dataclasses.replace(FA_MATCH, gpu="B200", compute_capability="10.0", backend="CUTLASS_MLA")
CUTLASS_PROFILE = Profile(CUTLASS_MATCH, (PerBatchRule("num_kv_splits", (Point(8, 4), Point(64, "auto"))),))


def _q(tokens: int) -> np.ndarray:
    return np.zeros((tokens, 4, 576), dtype=np.float32)


def test_cutlass_split_count_per_call(vllm, running):
    running.engine = engine_of(CUTLASS_MATCH)
    _, done = install(CUTLASS_PROFILE)
    assert "CutlassMLAImpl.forward_mqa" in done
    impl = vllm.cutlass_impl()
    impl.forward_mqa(_q(8), None, None, None)  # before any builder: the engine is unknown, vLLM's value
    new(vllm.cutlass)
    impl.forward_mqa(_q(8), None, None, None)
    impl.forward_mqa((_q(2), _q(2)), None, None, None)  # (q_nope, q_pe): nearest point 8
    impl.forward_mqa(_q(64), None, None, None)  # auto: the kernel picks
    impl.forward_mqa(_q(40), None, None, None)  # nearest 64
    assert impl.used == [-1, 4, 4, -1, -1]


def test_cutlass_split_count_returns_to_vllms_when_disabled(vllm, running):
    running.engine = engine_of(CUTLASS_MATCH)
    applier, _ = install(CUTLASS_PROFILE)
    new(vllm.cutlass)
    impl = vllm.cutlass_impl()
    impl.forward_mqa(_q(8), None, None, None)
    applier.fail(RuntimeError("elsewhere"), "somewhere")
    impl.forward_mqa(_q(8), None, None, None)
    assert impl.used == [4, -1]


TRITON_MATCH = dataclasses.replace(FA_MATCH, backend="TRITON_MLA")
TRITON_PROFILE = Profile(TRITON_MATCH, (PerBatchRule("num_kv_splits", (
    Point(8, 2, 1024), Point(8, 16, 16384), Point(64, "auto", 4096))),))


def _triton(vllm, running, workspace_elems: int):
    running.engine = engine_of(TRITON_MATCH)
    applier, done = install(TRITON_PROFILE)
    assert "TritonMLAImpl.forward_mqa+decode_attention_fwd" in done
    new(vllm.common)  # TRITON_MLA's builder in vLLM 0.20 is the common one
    assert applier.active is True
    workspace = Tensor(np.arange(workspace_elems, dtype=np.float32))
    return vllm.triton_impl(workspace), workspace


def test_triton_splits_forced_in_the_kernel_call(vllm, running):
    impl, workspace = _triton(vllm, running, 64 * 4 * 16 * 513)
    calls = vllm.triton_module.CALLS
    impl.forward_mqa(_q(8), None, SimpleNamespace(max_seq_len=1000, heuristic_splits=8), None)
    impl.forward_mqa(_q(8), None, SimpleNamespace(max_seq_len=20000, heuristic_splits=8), None)
    impl.forward_mqa(_q(64), None, SimpleNamespace(max_seq_len=4096, heuristic_splits=4), None)  # auto
    assert [(n, splits, logits.shape) for n, logits, splits in calls] == [
        (8, 2, (8, 4, 2, 513)), (8, 16, (8, 4, 16, 513)), (64, 4, (64, 4, 4, 513))]
    # fewer splits than vLLM's: a view of the scratch vLLM passed; more: a new buffer of the right size
    assert np.shares_memory(calls[0][1].a, workspace.a) and not np.shares_memory(calls[1][1].a, workspace.a)
    assert calls[2][1].shape == (64, 4, 4, 513) and np.shares_memory(calls[2][1].a, workspace.a)


def test_triton_kernel_wrapper_failure_runs_the_kernel_as_vllm_called_it(vllm, running, logs):
    _triton(vllm, running, 8 * 4 * 16 * 513)
    kernel = vllm.triton_module.decode_attention_fwd
    logits = Tensor(np.zeros((8, 4, 8, 513), dtype=np.float32))
    kernel(q=_q(8), k_buffer=None, v_buffer=None, o=None, lse=None, req_to_token=None, b_seq_len=None,
           attn_logits=logits, num_kv_splits=8, sm_scale=0.1)  # q as a keyword: the wrapper cannot read it
    (_, seen, splits), = vllm.triton_module.CALLS
    assert splits == 8 and seen is logits
    assert "disabled at vllm.v1.attention.backends.mla.triton_mla.decode_attention_fwd" in \
        logs.at(logging.WARNING)[0]


# -- force_splits -------------------------------------------------------------------------------------------------
def _call(splits: int, logits: Tensor, as_kwargs: bool = False) -> tuple[list, dict]:
    args = [_q(2), None, None, None, None, None, None, logits, splits, 0.1]
    if as_kwargs:
        return args[:7], {"attn_logits": logits, "num_kv_splits": splits, "sm_scale": 0.1}
    return args, {}


def test_force_splits_same_count_changes_nothing():
    logits = Tensor(np.zeros((2, 4, 8, 513), dtype=np.float32))
    args, kwargs = _call(8, logits)
    assert force_splits(args, kwargs, KC, 8) == 8 and args[7] is logits and args[8] == 8


def test_force_splits_fewer_splits_view_the_same_buffer():
    logits = Tensor(np.zeros((2, 4, 8, 513), dtype=np.float32))
    args, kwargs = _call(8, logits)
    assert force_splits(args, kwargs, KC, 2) == 8
    assert args[8] == 2 and args[7].shape == (2, 4, 2, 513) and np.shares_memory(args[7].a, logits.a)
    assert kwargs == {}


def test_force_splits_more_splits_get_a_new_buffer():
    logits = Tensor(np.zeros((2, 4, 8, 513), dtype=np.float32))
    args, kwargs = _call(8, logits)
    assert force_splits(args, kwargs, KC, 32) == 8
    assert args[8] == 32 and args[7].shape == (2, 4, 32, 513) and not np.shares_memory(args[7].a, logits.a)


def test_force_splits_non_contiguous_buffer_gets_a_new_one():
    logits = Tensor(np.zeros((2, 4, 16, 513), dtype=np.float32)[:, :, ::2])  # 8 splits, strided
    assert not logits.is_contiguous()
    args, kwargs = _call(8, logits)
    force_splits(args, kwargs, KC, 4)
    assert args[7].shape == (2, 4, 4, 513) and not np.shares_memory(args[7].a, logits.a)


def test_force_splits_by_keyword():
    logits = Tensor(np.zeros((2, 4, 8, 513), dtype=np.float32))
    args, kwargs = _call(8, logits, as_kwargs=True)
    assert force_splits(args, kwargs, KC, 4) == 8
    assert kwargs["num_kv_splits"] == 4 and kwargs["attn_logits"].shape == (2, 4, 4, 513)
    assert len(args) == 7 and kwargs["sm_scale"] == 0.1
