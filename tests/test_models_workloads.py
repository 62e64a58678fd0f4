from __future__ import annotations

import pytest

from mla_tune.errors import DataFileError, UnknownNameError, UsageError
from mla_tune.models import get_model, load_models
from mla_tune.workloads import get_workload, load_workloads

REQUIRED = ("decode_1k", "decode_4k", "decode_16k", "decode_64k", "spec_decode", "mixed", "prefill_4k",
            "prefill_16k")


def test_shipped_workloads():
    wl = load_workloads()
    assert set(REQUIRED) <= set(wl)
    for name in ("decode_1k", "decode_4k", "decode_16k", "decode_64k"):
        sizes = [len(s.shape.requests) for s in wl[name].shapes]
        assert min(sizes) == 1 and max(sizes) == 256
    assert {s.shape.max_q_len for s in wl["spec_decode"].shapes} == {2, 4, 8}


def test_adhoc_spec_workload_is_canonical():
    w = get_workload("spec:64q1s4096")
    assert w.specs == ("64q1s4k",) and w.name == "spec:64q1s4k"


def test_models_and_tp():
    v3 = get_model("deepseek-v3", 8)
    assert (v3.num_q_heads, v3.kv_lora_rank, v3.head_size, v3.label) == (16, 512, 576, "deepseek-v3-tp8")
    assert get_model("deepseek-r1").num_q_heads == 128
    assert get_model("kimi-k2").num_q_heads == 64
    assert get_model("deepseek-v2-lite").q_lora_rank is None
    with pytest.raises(UsageError, match="does not divide"):
        get_model("deepseek-v2-lite", 3)


def test_unknown_names_list_valid_ones():
    with pytest.raises(UnknownNameError, match="deepseek-v3") as e:
        get_model("llama")
    assert "deepseek-r1" in e.value.valid
    with pytest.raises(UnknownNameError, match="decode_4k"):
        get_workload("decode_5k")


@pytest.mark.parametrize("text, key, reason", [
    ("schema_version: 1\nworkloads:\n  w:\n    shapes: [64q1x4k]\n", "workloads.w.shapes[0].spec", "segment"),
    ("schema_version: 1\nworkloads:\n  w:\n    shapes: []\n", "workloads.w.shapes", "empty"),
    ("schema_version: 1\nworkloads:\n  w:\n    shapes: [{spec: q1s1k, weight: -1}]\n", "workloads.w.shapes[0].weight",
     "positive"),
    ("schema_version: 1\nworkloads:\n  w:\n    shapes: [q1s1k, q1s1024]\n", "workloads.w.shapes", "twice"),
    ("schema_version: 1\nworkloads:\n  w:\n    shape: [q1s1k]\n", "workloads.w.shape", "unknown key"),
    ("workloads: {}\n", "schema_version", "reads schema_version"),
])
def test_invalid_workload_files(tmp_path, text, key, reason):
    path = tmp_path / "workloads.yaml"
    path.write_text(text)
    with pytest.raises(DataFileError) as e:
        load_workloads(path)
    assert e.value.key == key and reason in e.value.reason and e.value.path == str(path)


@pytest.mark.parametrize("text, key", [
    ("schema_version: 1\nmodels:\n  m: {num_q_heads: 0, kv_lora_rank: 512, qk_rope_head_dim: 64, "
     "qk_nope_head_dim: 128, v_head_dim: 128}\n", "models.m.num_q_heads"),
    ("schema_version: 1\nmodels:\n  m: {num_q_heads: 8, kv_lora_rank: 512, qk_rope_head_dim: 64, "
     "qk_nope_head_dim: 128}\n", "models.m.v_head_dim"),
    ("schema_version: 1\nmodels:\n  m: {num_q_heads: eight, kv_lora_rank: 512, qk_rope_head_dim: 64, "
     "qk_nope_head_dim: 128, v_head_dim: 128}\n", "models.m.num_q_heads"),
])
def test_invalid_model_files(tmp_path, text, key):
    path = tmp_path / "models.yaml"
    path.write_text(text)
    with pytest.raises(DataFileError) as e:
        load_models(path)
    assert e.value.key == key
