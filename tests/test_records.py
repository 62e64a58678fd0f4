"""Stored-result records: a study name, a trial's result and a confirmation are read and written in one place,
and what is stored reads back unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from mla_tune.records import Candidate, Confirmation, Rounds, ShapeResult, StudyName, TrialResult
from mla_tune.storage.urls import open_storage, parse_storage
from mla_tune.types import Measurement, Status

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("text, record", [
    ("H100/deepseek-v3-tp1/FLASH_ATTN_MLA/64q1s4k", StudyName("H100", "deepseek-v3-tp1", "FLASH_ATTN_MLA", "64q1s4k")),
    ("H100-replay/deepseek-v3-tp8-kvfp8/FLASHMLA/mix:decode_1k",
     StudyName("H100-replay", "deepseek-v3-tp8-kvfp8", "FLASHMLA", "mix:decode_1k")),
    ("B200/org/model-tp2/TRITON_MLA/8q1s1k", StudyName("B200", "org/model-tp2", "TRITON_MLA", "8q1s1k")),
])
def test_parse_and_str_round_trip(text, record):
    assert StudyName.parse(text) == record
    assert str(record) == text


@pytest.mark.parametrize("text", ["", "H100", "H100/deepseek-v3-tp1/FLASH_ATTN_MLA", "H100//FLASHMLA/8q1s1k"])
def test_what_is_not_a_study_name_is_refused_naming_it(text):
    with pytest.raises(ValueError, match="not an mla-tune study name"):
        StudyName.parse(text)


@pytest.mark.parametrize("journal", ["results/h200/studies.journal", "results/h200/run1/studies.journal",
                                     "results/h100/studies.journal",
                                     "results/h100/gpus0.journal", "results/h100/plain-s3.journal"])
def test_the_committed_journals_read_and_write_back_unchanged(journal):
    store = open_storage(parse_storage(str(ROOT / journal)), create=False)
    n = confirmed = 0
    for s in optuna.get_all_study_summaries(store, include_best_trial=False):
        study = optuna.load_study(study_name=s.study_name, storage=store)
        for t in study.get_trials(deepcopy=False):
            r = TrialResult.from_trial(t)
            assert r.to_attrs() == t.user_attrs and (r.number, r.value) == (t.number, t.value)
            n += 1
        conf = Confirmation.of_study(study.user_attrs)
        if "confirmation" not in study.user_attrs:  # trials only (the H200 TP8 studies: their rounds never ran)
            assert conf is None
            continue
        assert conf is not None and conf.to_attrs() == study.user_attrs["confirmation"]
        confirmed += 1
    assert n > 0 and confirmed > 0


def test_a_one_shape_measurement_is_stored_flat_and_a_failure_by_spec():
    ok = ShapeResult.from_measurement(Measurement(Status.OK, (1.0, 1.2, 1.1, 1.3), rel_err=0.00123456,
                                                  details=(("block_size", "64"),)), {"max_num_splits": 8})
    r = TrialResult(key="k", status="ok", provenance={"runner": "fake"}, measurement=ok)
    attrs = r.to_attrs()
    assert attrs == {"key": "k", "status": "ok", "provenance": {"runner": "fake"}, "config": {"max_num_splits": 8},
                     "median_ms": 1.15, "spread": ok.spread, "n_samples": 4, "samples_ms": [1.0, 1.2, 1.1, 1.3],
                     "rel_err": 0.00123, "details": {"block_size": "64"}}
    assert TrialResult.from_attrs(attrs) == r and r.fresh and r.configs(["64q1s4k"]) == [{"max_num_splits": 8}]
    bad = ShapeResult.from_measurement(Measurement.failed(Status.OOM, "out of memory"), {"s": 1})
    failed = TrialResult(status="oom", message="8q1s4k: out of memory", shapes={"8q1s4k": bad})
    assert failed.to_attrs()["shapes"] == {"8q1s4k": {"status": "oom", "config": {"s": 1}, "message": "out of memory"}}
    assert TrialResult.from_attrs(failed.to_attrs()) == failed and failed.configs(["8q1s4k"]) == [{"s": 1}]


def test_a_partial_record_writes_only_its_step_and_unknown_keys_survive():
    assert TrialResult(key="k", role="baseline").to_attrs() == {"key": "k", "role": "baseline"}
    assert TrialResult(speedup_vs_default=1.05).to_attrs() == {"speedup_vs_default": 1.05}
    attrs = {"key": "k", "duplicate_of": 3, "from_the_future": [1, 2]}
    r = TrialResult.from_attrs(attrs)
    assert not r.fresh and r.duplicate_of == 3 and r.to_attrs() == attrs
    json.dumps(r.to_attrs())


def test_a_confirmation_of_the_first_schema_keeps_its_keys():
    old = {"trials": 10, "rounds": 6, "date": "2026-11-01T00:00:00Z", "runner": "vllm",
           "default": {"configs": [{"s": 32}]}, "winner": 0,
           "candidates": [{"trial": 4, "configs": [{"s": 1}], "status": "ok", "default_ms": 1.1, "best_ms": 1.0,
                           "speedup": 1.1, "ci95": [1.05, 1.15], "significant": True,
                           "samples": {"default": 120, "best": 120},
                           "round_ms": {"default": [1.1, 1.1], "best": [1.0, 1.0]}},
                          {"trial": 5, "configs": [{"s": 2}], "status": "failed", "message": "8q1s4k: oom: no"}]}
    conf = Confirmation.from_attrs(old)
    assert conf.to_attrs() == old
    assert conf.candidates[0].extra == {"ci95": [1.05, 1.15]} and conf.candidates[0].rounds == Rounds((1.1, 1.1),
                                                                                                     (1.0, 1.0))
    assert conf.candidates[1] == Candidate(5, ({"s": 2},), "failed", message="8q1s4k: oom: no")
    assert Confirmation.of_study({}) is None
