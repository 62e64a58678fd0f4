"""The knob declarations (``mla_tune.knobs``): coverage of defaults, ``check_params``, the rules ``resolve`` walks."""

from __future__ import annotations

import pytest

from mla_tune import batch_spec
from mla_tune.errors import UnknownNameError
from mla_tune.knobs import (
    BACKENDS,
    KNOBS,
    PREFILL_BACKENDS,
    Knob,
    RunnerApply,
    ServingApply,
    check_params,
    detail_key,
    knob,
    knob_names,
    knobs_for,
)
from mla_tune.vllm_adapters import adapter_for


def space_020(backend: str):
    """The shipped space as vLLM 0.20 runs it (TRITON_MLA without cuda_graphs)."""
    return adapter_for("0.20.0").search_space(backend)


def _resolve(backend: str, spec: str, answers: dict) -> dict:
    """``resolve`` with ``answers`` for the knobs it asks about (their defaults for the rest)."""
    return space_020(backend).resolve(batch_spec.parse(spec), lambda p: answers.get(p.name, p.default))


def _asked(backend: str, spec: str, answers: dict | None = None) -> list[str]:
    asked: list[str] = []

    def choose(p):
        asked.append(p.name)
        return (answers or {}).get(p.name, p.default)

    space_020(backend).resolve(batch_spec.parse(spec), choose)
    return asked


# -- the declarations ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", KNOBS, ids=lambda k: k.name)
def test_every_knob_has_a_valid_default_on_each_of_its_backends(k: Knob):
    assert k.backends and set(k.backends) <= set(BACKENDS)
    assert set(k.backends) <= set(k.defaults)
    for b in k.backends:
        assert k.accepts(k.default(b)), (k.name, b, k.default(b))
        space = space_020(b)
        if k.name in space:  # a search space restates vLLM's default, never another one
            assert space[k.name].default == k.default(b)


def test_a_knob_without_a_default_for_one_of_its_backends_is_refused():
    with pytest.raises(ValueError, match="knob x: no default for FLASHMLA"):
        Knob(name="x", type="int", backends=("FLASH_ATTN_MLA", "FLASHMLA"), defaults={"FLASH_ATTN_MLA": 1},
             description="", runner=RunnerApply.BUILDER, serving=ServingApply.PLUGIN_AT_BUILD)


def test_lookups_and_resolve_order():
    assert knob_names() == tuple(k.name for k in KNOBS)
    assert [k.name for k in knobs_for("FLASH_ATTN_MLA")] == ["reorder_batch_threshold", "prefill_backend",
                                                            "cuda_graphs", "max_num_splits"]
    # cuda_graphs is a knob of every backend; a family that never graphs one leaves it out of the space
    assert [k.name for k in knobs_for("TRITON_MLA")] == ["prefill_backend", "num_kv_splits", "cuda_graphs"]
    assert space_020("TRITON_MLA").names == ("prefill_backend", "num_kv_splits")
    assert [k.name for k in knobs_for("CUTLASS_MLA")] == ["prefill_backend", "prefill_query_quantization",
                                                         "num_kv_splits", "cuda_graphs"]
    assert knobs_for("NO_SUCH_BACKEND") == ()
    with pytest.raises(UnknownNameError, match="unknown parameter 'splits'; valid: cuda_graphs, max_num_splits"):
        knob("splits")
    assert knob("max_num_splits").per_batch and knob("num_kv_splits").per_batch
    assert not knob("reorder_batch_threshold").per_batch and not knob("cuda_graphs").per_batch


def test_accepts_and_allowed():
    prefill, splits, graphs, cap = (knob(n) for n in ("prefill_backend", "num_kv_splits", "cuda_graphs",
                                                      "max_num_splits"))
    assert prefill.accepts("auto") and prefill.accepts("fa2") and not prefill.accepts("fa5")
    assert prefill.allowed() == "'auto' or " + ", ".join(PREFILL_BACKENDS[1:])
    assert splits.accepts("auto") and splits.accepts(4) and not splits.accepts(0) and not splits.accepts("4")
    assert not splits.accepts(True)  # a bool is not a split count
    assert graphs.accepts(False) and not graphs.accepts(1) and not graphs.accepts("true")
    assert graphs.allowed() == "true or false"
    assert cap.accepts(1) and not cap.accepts(0) and not cap.accepts(-2) and not cap.accepts(2.0)
    assert not cap.accepts("auto") and cap.allowed() == "a positive integer"


# -- check_params ---------------------------------------------------------------------------------------------
def test_check_params_accepts_a_valid_config():
    assert check_params("FLASH_ATTN_MLA", {"reorder_batch_threshold": 64, "prefill_backend": "fa2",
                                           "cuda_graphs": False, "max_num_splits": 1}) == []
    assert check_params("TRITON_MLA", {"num_kv_splits": "auto", "prefill_backend": "auto"}) == []


def test_check_params_names_each_problem():
    assert check_params("FLASH_ATTN_MLA", {"splits": 4, "zz": 1}) == [
        "unknown parameter(s) splits, zz; known: " + ", ".join(knob_names())]
    assert check_params("TRITON_MLA", {"max_num_splits": 1}) == ["max_num_splits does not apply to TRITON_MLA"]
    assert check_params("TRITON_MLA", {"cuda_graphs": True}) == []  # a knob of every backend (0.22+ graph TRITON)
    assert check_params("FLASHMLA", {"max_num_splits": 4}) == ["max_num_splits does not apply to FLASHMLA"]
    assert check_params("FLASH_ATTN_MLA", {"max_num_splits": 0}) == [
        "max_num_splits=0; allowed: a positive integer"]
    assert check_params("TRITON_MLA", {"num_kv_splits": "many"}) == [
        "num_kv_splits='many'; allowed: 'auto' or a positive integer"]
    assert check_params("FLASHMLA", {"prefill_backend": "fa5"}) == [
        "prefill_backend='fa5'; allowed: 'auto' or fa2, fa3, fa4, flashinfer, cudnn, trtllm"]
    # all at once, unknown names first, then the known ones in name order
    problems = check_params("FLASHMLA", {"x": 1, "prefill_backend": "fa5", "cuda_graphs": "yes"})
    assert len(problems) == 3 and problems[0].startswith("unknown parameter(s) x;")
    assert problems[1] == "cuda_graphs='yes'; allowed: true or false"
    assert problems[2].startswith("prefill_backend='fa5'")


# -- the rules, as a space's resolve walks them -------------------------------------------------------
def test_thresholds_that_split_a_batch_alike_collapse_to_one_representative():
    # 2q4s4k: q_len 4. Thresholds >= 4 send both requests to decode, 1 and 2 send them to prefill.
    for t in (4, 8, 16, 64, 128, 512):
        assert _resolve("FLASHMLA", "2q4s4k", {"reorder_batch_threshold": t})["reorder_batch_threshold"] == 128
    for t in (1, 2):  # the default is not in this class: the largest value of it
        assert _resolve("FLASHMLA", "2q4s4k", {"reorder_batch_threshold": t})["reorder_batch_threshold"] == 2
    # a mixed spec batch: 4 < t <= ... splits at q_len 8 too
    assert _resolve("FLASH_ATTN_MLA", "2q4s4k_2q16s4k", {"reorder_batch_threshold": 8}
                    )["reorder_batch_threshold"] == 8
    assert _resolve("FLASH_ATTN_MLA", "2q4s4k_2q16s4k", {"reorder_batch_threshold": 16}
                    )["reorder_batch_threshold"] == 512


def test_threshold_is_not_asked_where_every_request_is_single_token():
    assert "reorder_batch_threshold" not in _asked("FLASHMLA", "64q1s4k")
    assert _resolve("FLASHMLA", "64q1s4k", {"reorder_batch_threshold": 2})["reorder_batch_threshold"] == 128
    assert "reorder_batch_threshold" in _asked("FLASHMLA", "64q2s4k")


def test_cuda_graphs_false_where_vllm_would_not_graph():
    on = {"cuda_graphs": True}
    assert _resolve("FLASH_ATTN_MLA", "64q1s4k", on)["cuda_graphs"] is True
    assert _resolve("FLASH_ATTN_MLA", "64q1s4k", {"cuda_graphs": False})["cuda_graphs"] is False
    assert _resolve("FLASH_ATTN_MLA", "q4k", on)["cuda_graphs"] is False  # a prefill
    assert _resolve("FLASH_ATTN_MLA", "1024q1s1k", on)["cuda_graphs"] is False  # beyond 512 tokens
    assert _resolve("FLASH_ATTN_MLA", "2q1s4k_2q2s4k", on)["cuda_graphs"] is False  # not uniform
    # a threshold that sends the q_len-4 requests to prefill makes the batch ungraphable
    assert _resolve("FLASHMLA", "8q4s4k", {"reorder_batch_threshold": 2, "cuda_graphs": True}
                    )["cuda_graphs"] is False
    assert _resolve("FLASHMLA", "8q4s4k", on)["cuda_graphs"] is True
    # CUTLASS graphs only single-token decode
    assert _resolve("CUTLASS_MLA", "8q1s4k", on)["cuda_graphs"] is True
    assert _resolve("CUTLASS_MLA", "8q2s4k", on)["cuda_graphs"] is False
    assert "cuda_graphs" not in _asked("FLASH_ATTN_MLA", "q4k")


def test_split_cap_only_matters_under_graphs_without_fa2():
    cap1 = {"max_num_splits": 1}
    assert _resolve("FLASH_ATTN_MLA", "256q1s4k", cap1)["max_num_splits"] == 1
    assert _resolve("FLASH_ATTN_MLA", "256q1s4k", cap1 | {"prefill_backend": "fa2"})["max_num_splits"] == 32
    assert _resolve("FLASH_ATTN_MLA", "256q1s4k", cap1 | {"prefill_backend": "fa3"})["max_num_splits"] == 1
    assert _resolve("FLASH_ATTN_MLA", "256q1s4k", cap1 | {"cuda_graphs": False})["max_num_splits"] == 32
    assert _resolve("FLASH_ATTN_MLA", "q4k", cap1)["max_num_splits"] == 32  # never graphed
    assert "max_num_splits" not in _asked("FLASH_ATTN_MLA", "8q1s4k", {"prefill_backend": "fa2"})


def test_prefill_matters_on_flash_attn_decode_only():
    # FA2 for prefill turns FA3's decode scheduler off, so FLASH_ATTN_MLA asks even for pure decode
    assert _resolve("FLASH_ATTN_MLA", "64q1s4k", {"prefill_backend": "fa2"})["prefill_backend"] == "fa2"
    assert "prefill_backend" in _asked("FLASH_ATTN_MLA", "64q1s4k")
    for backend in ("FLASHMLA", "TRITON_MLA", "CUTLASS_MLA"):
        assert "prefill_backend" not in _asked(backend, "64q1s4k")
        assert _resolve(backend, "64q1s4k", {"prefill_backend": "fa2"})["prefill_backend"] == "auto"
        assert _resolve(backend, "q4k", {"prefill_backend": "fa2"})["prefill_backend"] == "fa2"


def test_kv_splits_matter_only_with_a_decode_part():
    assert _resolve("TRITON_MLA", "8q1s4k", {"num_kv_splits": 4})["num_kv_splits"] == 4
    assert _resolve("TRITON_MLA", "q4k", {"num_kv_splits": 4})["num_kv_splits"] == "auto"


# -- detail_key -----------------------------------------------------------------------------------------------
def test_detail_key_says_where_a_measurement_reports_the_resolved_value():
    assert detail_key("max_num_splits") == "fa_num_splits"
    assert detail_key("prefill_backend") == "prefill"
    assert detail_key("num_kv_splits") == "num_kv_splits"
    assert detail_key("reorder_batch_threshold") == "reorder_batch_threshold"
    assert detail_key("cuda_graphs") == "cuda_graphs"  # no detail_key declared: its own name
    assert detail_key("block_size") == "block_size"  # not a knob: the name itself


# -- how the runner applies each knob: what a change of it rebuilds ------------------------------------------
def _plan_for(backend: str, spec: str, **params):
    from mla_tune.batch_spec import parse
    from mla_tune.models import get_model
    from mla_tune.runners._vllm_plan import make_plan
    from mla_tune.types import Case, freeze_params

    shape = parse(spec)
    config = space_020(backend).resolve(shape, lambda p: params.get(p.name, p.default))  # as a study asks
    return make_plan(Case(backend, shape, get_model("deepseek-v3", 1), freeze_params(config)))


@pytest.mark.parametrize(("backend", "spec", "name", "value"), [
    ("FLASH_ATTN_MLA", "2q512s2k_16q1s2k", "reorder_batch_threshold", 128),  # not graphed either way
    ("FLASH_ATTN_MLA", "64q1s4k", "max_num_splits", 1),
    ("FLASH_ATTN_MLA", "64q1s4k", "prefill_backend", "fa2"),
    ("FLASH_ATTN_MLA", "64q1s4k", "cuda_graphs", False),
    ("TRITON_MLA", "64q1s4k", "num_kv_splits", 2),
    ("CUTLASS_MLA", "64q1s4k", "num_kv_splits", 2),
])
def test_each_knobs_runner_apply_is_what_a_change_of_it_rebuilds(backend, spec, name, value):
    from mla_tune.knobs import RunnerApply

    base, changed = _plan_for(backend, spec), _plan_for(backend, spec, **{name: value})
    apply = knob(name).runner
    if apply is RunnerApply.ENGINE:  # a new config, impl and builder
        assert changed.engine != base.engine
    elif apply is RunnerApply.BUILDER:  # new metadata on the same engine
        assert changed.engine == base.engine and changed.metadata_key != base.metadata_key
    else:  # per call: nothing rebuilt
        assert changed.metadata_key == base.metadata_key and changed != base


# -- a knob added by one declaration: fp8 prefill queries (vLLM's use_prefill_query_quantization) -------------
def test_prefill_query_quantization_matters_only_with_fp8_kv_and_a_prefill_part():
    from mla_tune.runners._vllm_plan import engine_attention
    from mla_tune.serving import serving_settings
    from mla_tune.vllm_adapters import adapter_for

    space = space_020("CUTLASS_MLA")
    prefill, decode = batch_spec.parse("q2ks4k"), batch_spec.parse("64q1s4k")
    assert {c["prefill_query_quantization"] for c in space.expand(prefill)} == {False}  # bf16 KV: idle
    fp8 = space.for_kv("fp8")
    assert {c["prefill_query_quantization"] for c in fp8.expand(prefill)} == {False, True}
    assert {c["prefill_query_quantization"] for c in fp8.expand(decode)} == {False}  # no prefill part
    assert not [c for c in fp8.expand(prefill) if c["prefill_query_quantization"] and
                c["prefill_backend"] in ("fa2", "fa3", "fa4", "cudnn")]  # FA/cuDNN prefill has no fp8 path
    assert engine_attention("CUTLASS_MLA", {"prefill_query_quantization": True}) == \
        (("use_prefill_query_quantization", True),)
    for version in ("0.20.0", "0.26.0", "0.33.0"):
        s = serving_settings("FLASHINFER_MLA", {"prefill_query_quantization": True},
                             {"prefill_query_quantization": False}, adapter_for(version))
        assert s.attention_config["use_prefill_query_quantization"] is True and not s.plugin_only
