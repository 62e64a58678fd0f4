"""Tuning tables: a golden file pins the exported format; entries within noise keep the defaults."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mla_tune.errors import DataFileError, UsageError
from mla_tune.tables.export import HEADER, dump_yaml, load_table, write_table
from mla_tune.tables.summary import StudySummary
from mla_tune.tables.table import build_table, table_rows

GOLDEN = Path(__file__).parent / "golden" / "table.yaml"
ENV = {"runner": "vllm", "gpu": {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "sm_count": 132},
       "driver": "580.159.04", "cuda": "13.0", "torch": "2.11.0+cu130", "vllm": "0.20.0", "mla_tune": "0.1.0"}
MODEL = {"model": "deepseek-v3", "tp": 8, "num_q_heads": 16, "kv_lora_rank": 512, "qk_rope_head_dim": 64,
         "qk_nope_head_dim": 128, "v_head_dim": 128, "q_lora_rank": 1536}
DEFAULT = {"cuda_graphs": True, "max_num_splits": 32, "prefill_backend": "auto", "reorder_batch_threshold": 512}


def summary(spec, candidates, winner, date="2026-11-24T23:00:00Z"):
    attrs = {"backend": "FLASH_ATTN_MLA", "model": MODEL, "kv_cache_dtype": "auto", "workload": "decode_4k",
             "objective": "per-shape", "shapes": [{"spec": spec, "weight": 1.0}], "environment": ENV}
    conf = {"trials": 24, "rounds": 6, "date": date, "runner": "vllm", "default": {"configs": [DEFAULT]},
            "candidates": candidates, "winner": winner}
    base = {"median_ms": 0.05, "n_samples": 30, "details": {"block_size": "64"}, "value": 0.05}
    return StudySummary(f"H100/deepseek-v3-tp8/FLASH_ATTN_MLA/{spec}", attrs, 24, 1, 3, base, 0.04, {}, 7, conf)


ROUNDS = [0.0512, 0.0509, 0.0515, 0.0511, 0.0514, 0.0510]


def cand(splits, speedup, noise):
    """A confirmed candidate whose rounds run ``speedup`` faster with +-``noise`` relative wobble."""
    best = [round(a / speedup * (1 + (noise if i % 2 else -noise)), 7) for i, a in enumerate(ROUNDS)]
    return {"trial": 7, "configs": [DEFAULT | {"max_num_splits": splits}], "status": "ok", "default_ms": 0.0512,
            "best_ms": round(0.0512 / speedup, 6), "samples": {"default": 180, "best": 180},
            "round_ms": {"default": ROUNDS, "best": best}}


def summaries():
    return [
        summary("64q1s4k", [cand(8, 1.062, 0.01), cand(16, 1.031, 0.01)], 0),
        summary("8q1s4k", [cand(4, 1.004, 0.02)], None, date="2026-11-24T22:00:00Z"),
        summary("q1s4k", [{"trial": 3, "configs": [DEFAULT], "status": "failed", "message": "timeout"}], None),
    ]  # not in reading order: the table sorts them by batch size


def test_table_matches_the_golden_file():
    text = HEADER + dump_yaml(build_table(summaries()))
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()


def test_entries():
    t = build_table(summaries())
    failed, noise, tuned = t["entries"]  # q1s4k, 8q1s4k, 64q1s4k: by batch size, not by name
    assert tuned["tuned"] and tuned["params"]["max_num_splits"] == 8
    assert tuned["speedup"] == pytest.approx(1.062, rel=1e-3) and tuned["ci"][0] > 1 and tuned["ci_level"] == 0.975
    assert not noise["tuned"] and noise["params"] == DEFAULT and "noise" in noise["note"]
    assert noise["best_candidate"]["speedup"] == pytest.approx(1.004, rel=1e-3)
    assert noise["best_candidate"]["ci"][0] < 1 < noise["best_candidate"]["ci"][1]
    assert "every candidate failed" in failed["note"] and failed["params"] == DEFAULT
    assert t["provenance"]["date"] == "2026-11-24T23:00:00Z" and t["block_size"] == 64
    rows = table_rows(t)
    assert rows[2][:3] == ["64q1s4k", "decode", "yes"] and rows[1][2] == "no"


def test_write_is_atomic_and_deterministic(tmp_path):
    p = write_table(build_table(summaries()), tmp_path / "out" / "t.yaml")
    first = p.read_bytes()
    write_table(build_table(summaries()), p)
    assert p.read_bytes() == first and load_table(p)["backend"] == "FLASH_ATTN_MLA"
    assert [f.name for f in p.parent.iterdir()] == ["t.yaml"]


def test_studies_from_different_gpus_do_not_mix():
    a, b = summaries()[:2]
    other = StudySummary(b.name, b.attrs | {"environment": ENV | {"gpu": ENV["gpu"] | {"name": "NVIDIA H200"}}},
                         *list(b.__dict__.values())[2:])
    with pytest.raises(UsageError, match="different GPUs"):
        build_table([a, other])


def test_load_table_rejects_other_files(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text("schema_version: 1\nkind: something\n")
    with pytest.raises(DataFileError, match="kind"):
        load_table(p)


def test_prefill_choice_equal_to_what_auto_picks_is_written_as_auto():
    fa3 = cand(8, 1.062, 0.01)
    fa3["configs"] = [DEFAULT | {"max_num_splits": 8, "prefill_backend": "fa3"}]
    only_fa3 = cand(32, 1.05, 0.005)
    only_fa3["configs"] = [DEFAULT | {"prefill_backend": "fa3"}]
    a, b = summary("64q1s4k", [fa3], 0), summary("32q1s4k", [only_fa3], 0)
    for s in (a, b):
        s.baseline["details"]["prefill"] = "fa3"  # what auto resolved to when the baseline ran
    t = build_table([a, b])
    e32, e64 = t["entries"]
    assert e64["tuned"] and e64["params"]["prefill_backend"] == "auto"
    assert e64["params"]["max_num_splits"] == 8 and "what auto selects" in e64["note"]
    assert not e32["tuned"] and "same kernels" in e32["note"]


def test_a_shape_where_every_config_fails_says_so_and_keeps_no_latency():
    """Serving must learn that the backend cannot run this shape, not read "defaults kept" as "defaults fine"."""
    s = summary("256q1s16k", [], None)
    msg = "256q1s16k: reference (default config): RuntimeError: Triton Error [CUDA]: an illegal memory access"
    s = StudySummary(s.name, s.attrs, 8, 8, 0, {"status": "error", "message": msg + "\nmore", "value": None},
                     None, None, None, s.confirmation)
    [e] = build_table([s])["entries"]
    assert not e["tuned"] and e["error"] == msg and "fails here: all 8 configs failed" in e["note"]
    assert "latency_ms" not in e and "speedup" not in e
    assert table_rows({"entries": [e]})[0][2] == "FAILS"


def test_entries_read_by_batch_size_then_context():
    specs = ["256q1s16k", "q1s16k", "32q1s16k", "128q1s16k", "8q1s16k", "q1s1k"]
    t = build_table([summary(spec, [cand(8, 1.062, 0.01)], 0) for spec in specs])
    assert [e["shape"] for e in t["entries"]] == ["q1s1k", "q1s16k", "8q1s16k", "32q1s16k", "128q1s16k", "256q1s16k"]


def test_a_table_of_per_shape_and_mix_studies_says_both_objectives():
    a = summary("64q1s4k", [cand(8, 1.062, 0.01)], 0)
    b = summary("8q1s4k", [cand(4, 1.004, 0.02)], None)
    b = StudySummary(b.name, b.attrs | {"objective": "mix"}, *list(b.__dict__.values())[2:])
    assert build_table([a, b])["objective"] == "mix+per-shape"
    assert build_table([a])["objective"] == "per-shape"


def test_a_table_says_which_entries_are_not_confirmed_rather_than_not_tuned():
    from dataclasses import replace
    from pathlib import Path

    from mla_tune import api
    from mla_tune.tables.table import build_table, table_rows

    root = Path(__file__).resolve().parents[1]
    # the H200 TP8 studies as run 2 left them: trials measured, their confirmation never ran (the GPU stopped
    # starting CUDA; session 3 confirmed them)
    summaries = [s for s in api.find_studies(storage=str(root / "results/h200/studies.journal"))
                 if "/deepseek-v3-tp8/TRITON_MLA/" in s.name]
    assert len(summaries) == 35 and all(s.confirmation for s in summaries)
    rows = table_rows(build_table([replace(s, confirmation=None) for s in summaries]))
    assert {r[2] for r in rows} == {"not confirmed"}
    rows = table_rows(build_table(summaries))
    assert {r[2] for r in rows} <= {"yes", "no", "FAILS"} and "yes" in {r[2] for r in rows}
