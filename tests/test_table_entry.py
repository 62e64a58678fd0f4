"""A table entry as a typed record: every committed table's entries read into records and write back the same
YAML, each kind of entry answers its questions (label, served configs, verdict) from typed fields."""

from __future__ import annotations

from pathlib import Path

import pytest

from mla_tune.tables.entry import BestCandidate, Interval, TableEntry, Trials, entries
from mla_tune.tables.export import check_table, load_table

from .test_table_validation import GOLDEN, ROOT, mix_table

TABLES = sorted(p for p in (ROOT / "results").rglob("*.yaml") if "kind: mla-tune/tuning-table" in p.read_text())
TABLES.append(GOLDEN)


def test_the_committed_tables_are_found():
    assert len(TABLES) >= 18  # H100, H200 (two runs, adaptive, vLLM 0.26) and the paired H100 studies


@pytest.mark.parametrize("path", TABLES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_committed_entry_reads_into_a_record_and_writes_back_the_same(path: Path):
    table = load_table(path)
    for raw, e in zip(table["entries"], entries(table)):
        assert e.to_dict() == raw
        assert TableEntry.from_dict(e.to_dict()) == e


def test_the_kinds_of_entries():
    g = entries(load_table(GOLDEN))
    tuned = next(e for e in g if e.tuned)
    assert tuned.label == tuned.shape and len(tuned.params) == len(tuned.default_params) == 1
    assert tuned.confirmed.speedup > 1 and tuned.confirmed.ci[0] > 1 and tuned.best_candidate is None
    kept = [e for e in g if not e.tuned and e.best_candidate is not None]
    for e in kept:  # vLLM's default served, x1, the fastest candidate only shown
        assert e.params == e.default_params and e.confirmed == Interval(1.0) and e.best_ms == e.default_ms
    mix = entries(check_table(Path("m.yaml"), mix_table()))[3]
    assert mix.shape is None and mix.label == "mix:mixed" and len(mix.params) == len(mix.shapes) == 2
    assert isinstance(mix.to_dict()["params"], list) and mix.kind is None


def test_an_unconfirmed_entry_writes_no_verdict():
    e = TableEntry(Trials(3, 0, 1), tuned=False, shape="64q1s4k", kind="decode", note="not confirmed yet")
    d = e.to_dict()
    assert d == {"trials": {"measured": 3, "failed": 0, "reused": 1}, "shape": "64q1s4k", "kind": "decode",
                 "tuned": False, "note": "not confirmed yet"}
    assert not e.confirmed_yet and TableEntry.from_dict(d) == e


def test_a_candidate_kept_without_its_rounds_has_no_interval():
    best = BestCandidate(({"max_num_splits": 8},), 0.04, Interval(1.01))
    assert best.to_dict() == {"params": {"max_num_splits": 8}, "latency_ms": 0.04, "speedup": 1.01}
