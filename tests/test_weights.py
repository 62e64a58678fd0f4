"""A shape's latency is its own whatever its traffic weight: weights move the mix objective and deploy's pricing only."""

from __future__ import annotations

from pathlib import Path

import pytest

from mla_tune import api
from mla_tune.tables.export import load_table
from mla_tune.tables.summary import StudySummary
from mla_tune.tables.table import build_table

from .fakes import FakeRunner

ROOT = Path(__file__).resolve().parent.parent
OPT = {"cuda_graphs": True, "max_num_splits": 8, "prefill_backend": "fa3"}


def entry_ms(tmp_path, workload):
    api.run_study(backend="FLASH_ATTN_MLA", workload=workload, storage=str(tmp_path / "s.journal"),
                  runner=FakeRunner(optimum=OPT, noise=0.001), confirm_rounds=4)
    _, table = api.export_table(tmp_path / "t.yaml", storage=str(tmp_path / "s.journal"), backend="FLASH_ATTN_MLA")
    [entry] = table["entries"]
    return entry


def test_a_weight_never_scales_one_shapes_latency(tmp_path):
    plain = entry_ms(tmp_path / "plain", "spec:64q1s4k")
    heavy = entry_ms(tmp_path / "heavy", "spec:64q1s4k@50")
    assert heavy["latency_ms"]["default"] == pytest.approx(plain["latency_ms"]["default"], rel=0.02)
    assert heavy["latency_ms"]["best"] == pytest.approx(plain["latency_ms"]["best"], rel=0.02)
    assert heavy["speedup"] == pytest.approx(plain["speedup"], rel=0.01)


def test_times_a_schema_1_study_stored_multiplied_by_its_weight_are_divided_back():
    attrs = {"schema_version": 1, "backend": "FLASH_ATTN_MLA", "workload": "mixed", "objective": "per-shape",
             "kv_cache_dtype": "auto", "shapes": [{"spec": "q1ks4k_64q1s4k", "weight": 2.0}],
             "model": {"model": "deepseek-v3", "tp": 1, "num_q_heads": 128, "kv_lora_rank": 512,
                       "qk_rope_head_dim": 64, "qk_nope_head_dim": 128, "v_head_dim": 128, "q_lora_rank": 1536},
             "environment": {"runner": "vllm", "gpu": {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0",
                                                       "sm_count": 132}}}
    default = {"cuda_graphs": False, "max_num_splits": 32, "prefill_backend": "auto", "reorder_batch_threshold": 512}
    cand = {"trial": 3, "configs": [default | {"prefill_backend": "fa2"}], "status": "ok", "default_ms": 2.2,
            "best_ms": 2.4, "samples": {"default": 100, "best": 100},
            "round_ms": {"default": [2.2, 2.21, 2.19, 2.2], "best": [2.4, 2.41, 2.39, 2.4]}}
    conf = {"trials": 5, "rounds": 4, "date": "2026-11-24T23:00:00Z", "runner": "vllm",
            "default": {"configs": [default]}, "candidates": [cand], "winner": None}
    s = StudySummary("H100/deepseek-v3-tp1/FLASH_ATTN_MLA/q1ks4k_64q1s4k", attrs, 5, 0, 0,
                     {"median_ms": 1.1, "value": 2.2}, 2.2, {"median_ms": 1.1}, 0, conf)
    [entry] = build_table([s])["entries"]
    assert entry["latency_ms"] == {"default": 1.1, "best": 1.1} and entry["best_candidate"]["latency_ms"] == 1.2
    assert s.baseline_ms == 1.1 and s.best_ms == 1.1  # show's columns: the medians, not the weighted values


@pytest.mark.parametrize("path", sorted((ROOT / "results").glob("*/tables/*.yaml")) +
                         sorted((ROOT / "results").glob("*/run1/tables/*.yaml")), ids=lambda p: p.name)
def test_every_committed_table_states_each_shapes_own_latency(path):
    """The committed `mixed` tables carried q1ks4k_64q1s4k at twice its time (its weight 2); corrected, each
    per-shape entry's default latency agrees with its own landscape's recording of vLLM's default."""
    from mla_tune.workloads import load_workloads

    weighted = {s.spec for w in load_workloads().values() for s in w.shapes if s.weight != 1}
    table = load_table(path)
    for e in table["entries"]:
        land = {repr(sorted(x["params"].items())): x["trial_ms"] for x in e.get("landscape") or []}
        if e.get("shape") not in weighted or "latency_ms" not in e:
            continue
        own = land.get(repr(sorted(e["default_params"].items())))
        if own:  # nearer its own recording than twice it: the weight (2) no longer multiplies it
            assert e["latency_ms"]["default"] / own < 2 ** 0.5, e["shape"]
