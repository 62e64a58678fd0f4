"""Priors: long-shot configs, shape distances, and which stored studies a new one may learn from."""

from __future__ import annotations

import pytest

from mla_tune.batch_spec import parse
from mla_tune.study.priors import late, neighbours, shape_distance

SPACE = {"max_num_splits": {"default": 32, "values": [1, 32]}}


def attrs(spec, *, backend="FLASH_ATTN_MLA", tp=1, objective="per-shape", kv="auto", space=None, shapes=None):
    return {"backend": backend, "kv_cache_dtype": kv, "objective": objective, "space": space or SPACE,
            "model": {"model": "deepseek-v3", "tp": tp, "num_q_heads": 128 // tp, "kv_lora_rank": 512},
            "shapes": shapes or [{"spec": spec, "weight": 1}]}


def name(spec, backend="FLASH_ATTN_MLA", tp=1, gpu="H200"):
    return f"{gpu}/deepseek-v3-tp{tp}/{backend}/{spec}"


def test_turning_off_the_graph_vllm_replays_is_a_long_shot():
    graphed = {"cuda_graphs": True, "max_num_splits": 32}
    assert late([{"cuda_graphs": False, "max_num_splits": 32}], [graphed])
    assert not late([{"cuda_graphs": True, "max_num_splits": 1}], [graphed])
    # a shape vLLM runs eager anyway: the default is eager too, nothing is given up
    assert not late([{"cuda_graphs": False}], [{"cuda_graphs": False}])
    assert not late([{"num_kv_splits": 4}], [{"num_kv_splits": "auto"}])  # no graph knob at all


def test_shape_distance_counts_doublings_of_batch_context_and_tokens_per_request():
    assert shape_distance(parse("64q1s4k"), parse("64q1s4k")) == 0
    assert shape_distance(parse("64q1s4k"), parse("128q1s4k")) == pytest.approx(1)
    assert shape_distance(parse("64q1s4k"), parse("64q1s16k")) == pytest.approx(2)
    assert shape_distance(parse("32q1s4k"), parse("32q4s4k")) == pytest.approx(2)
    # a chunked prefill in the batch is far from any pure decode of the same size
    assert shape_distance(parse("q1ks4k_64q1s4k"), parse("65q1s4k")) > 2


def test_neighbours_are_the_same_engine_on_the_same_gpu_nearest_first():
    here = name("64q1s4k")
    stored = [
        (name("128q1s4k"), attrs("128q1s4k")),
        (name("32q1s1k"), attrs("32q1s1k")),
        (name("64q1s4k", tp=8), attrs("64q1s4k", tp=8)),  # other TP: 3 doublings of heads away
        (name("64q1s4k", gpu="H100"), attrs("64q1s4k")),  # another GPU
        (name("64q1s4k", backend="TRITON_MLA"), attrs("64q1s4k", backend="TRITON_MLA")),
        (name("64q1s4k") + "-kvfp8", attrs("64q1s4k", kv="fp8")),
        (name("128q1s4k") + "x", attrs("128q1s4k", space={"other": {}})),  # another search space
        (name("mix:decode_4k"), attrs("", objective="mix", shapes=[{"spec": "q1s4k"}, {"spec": "8q1s4k"}])),
        ("someone-elses-study", {}),
        (here, attrs("64q1s4k")),  # itself
    ]
    assert neighbours(here, attrs("64q1s4k"), stored) == [(1.0, name("128q1s4k")), (3.0, name("32q1s1k")),
                                                          (3.0, name("64q1s4k", tp=8))]
    assert neighbours(name("mix:decode_4k"), attrs("", objective="mix", shapes=[{"spec": "q1s4k"},
                                                                                {"spec": "8q1s4k"}]), stored) == []
