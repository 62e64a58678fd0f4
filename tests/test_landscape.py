"""Landscapes read from tables and sweeps: typed records with each config's median, verdicts and provenance."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from mla_tune.errors import DataFileError
from mla_tune.tables.landscape import freeze, latency_text, setting_text
from mla_tune.tables.landscape_io import read_inputs, read_sweeps, read_table

from .test_plots import sweep_subset

ROOT = Path(__file__).resolve().parent.parent
FA_H200 = ROOT / "results/h200/run1/tables/FLASH_ATTN_MLA-deepseek-v3-tp1.yaml"


def test_a_table_reads_into_verdicts_and_trial_medians():
    ls = read_table(FA_H200)
    assert (ls.kind, ls.backend, ls.model, ls.tp, ls.kv_cache_dtype) == ("table", "FLASH_ATTN_MLA", "deepseek-v3", 1,
                                                                         "auto")
    assert ls.source.gpu == "NVIDIA H200" and ls.source.vllm == "0.20.0" and not ls.source.replay
    assert ls.source.tag == "H200, vLLM 0.20.0, runner vllm" and ls.stem == "H200-FLASH_ATTN_MLA-deepseek-v3-tp1"
    assert "max_num_splits" in ls.knobs
    s = {x.label: x for x in ls.shapes}["256q1s4k"]
    assert len(s.points) == 18 and s.points[0].ms == min(p.ms for p in s.points)
    assert s.default == freeze({"cuda_graphs": True, "max_num_splits": 32, "prefill_backend": "auto",
                                "reorder_batch_threshold": 512})
    v = s.verdict
    assert v.tuned and v.changes() == ({"max_num_splits": 1},) and v.confirmed.text() == "x1.105 [1.081, 1.129]"
    assert setting_text(v) == "max_num_splits=1" and latency_text(v) == "0.5549 → 0.5043"
    kept = {x.label: x for x in ls.shapes}["q1s4k"].verdict
    assert not kept.tuned and setting_text(kept) == "vLLM default" and kept.candidate[1].low == 0.9822


def test_sweep_rounds_give_the_median_of_the_recordings_medians(tmp_path):
    path = sweep_subset(tmp_path, {"q1s1k"})
    lines = path.read_text().splitlines()
    again = []
    for i, factor in ((2, 1.5), (3, 3.0)):  # two more rounds of every config, slower each time
        for line in lines[1:]:
            r = json.loads(line)
            again.append(json.dumps({**r, "round": i, "samples_ms": [x * factor for x in r["samples_ms"]]}))
    path.write_text("\n".join(lines + again) + "\n")
    [ls] = read_sweeps([path])
    [s] = ls.shapes
    first = json.loads(lines[1])
    config = freeze(first["config"])
    assert next(p.ms for p in s.points if p.config == config) == pytest.approx(
        statistics.median(first["samples_ms"]) * 1.5)


def test_sweeps_of_one_gpu_and_backend_merge_into_one_landscape(tmp_path):
    b = sweep_subset(tmp_path, {"q1s16k"}).rename(tmp_path / "b.jsonl")
    a = sweep_subset(tmp_path, {"q1s1k"})
    [ls] = read_inputs([a, b])
    assert [s.label for s in ls.shapes] == ["q1s1k", "q1s16k"]
    assert str(a) in ls.source.path and str(b) in ls.source.path


def test_a_config_is_failed_only_when_every_recording_failed(tmp_path):
    path = sweep_subset(tmp_path, {"q1s1k"})
    lines = path.read_text().splitlines()
    r = json.loads(lines[2])
    bad = json.dumps({**r, "round": 2, "status": "error", "samples_ms": [], "message": "boom"})
    path.write_text("\n".join(lines + [bad]) + "\n")
    [ls] = read_sweeps([path])
    assert ls.shapes[0].failed == () and len(ls.shapes[0].points) == 8


def test_an_empty_sweep_is_one_error(tmp_path):
    path = sweep_subset(tmp_path, set())
    with pytest.raises(DataFileError, match="no measurements"):
        read_sweeps([path])
