"""Traffic files (YAML and CSV): valid files, merged duplicates, and one-line errors naming the file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from mla_tune.errors import DataFileError
from mla_tune.traffic import Traffic, load_traffic, uniform_traffic, workload_traffic

DATA = Path(__file__).resolve().parent / "data"
HEAD = "schema_version: 1\nkind: mla-tune/traffic\n"


def test_yaml_traffic_file():
    t = load_traffic(DATA / "traffic.yaml")
    # canonical specs, file order, duplicates (q1s4k and 1q1s4k) merged, a missing weight is 1
    assert t.weights == (("q1s4k", 30.0), ("64q1s4k", 50.0), ("256q1s4k", 20.5), ("8q4s4k", 1.0))
    assert t.source == str(DATA / "traffic.yaml")
    assert t.weight("64q1s4k") == 50.0 and t.weight("128q1s4k") == 0.0
    assert t.specs == ("q1s4k", "64q1s4k", "256q1s4k", "8q4s4k")


def test_csv_traffic_file_reads_the_same():
    t = load_traffic(DATA / "traffic.csv")
    assert t.weights == (("q1s4k", 30.0), ("64q1s4k", 50.0), ("256q1s4k", 20.5))


def test_csv_columns_in_any_order(tmp_path: Path):
    p = tmp_path / "t.CSV"  # the suffix decides, whatever its case
    p.write_text("weight,spec\n3,64q1s4k\n")
    assert load_traffic(p).weights == (("64q1s4k", 3.0),)


def test_workload_and_uniform_traffic():
    w = workload_traffic("decode_4k")
    assert w.specs == ("q1s4k", "8q1s4k", "32q1s4k", "64q1s4k", "128q1s4k", "256q1s4k")
    assert w.source == "workload decode_4k" and all(x > 0 for _, x in w.weights)
    u = uniform_traffic(["q1s4k", "8q1s4k", "q1s4k"], "why")
    assert u == Traffic((("q1s4k", 1.0), ("8q1s4k", 1.0)), "why")


BAD_YAML = [
    ("spec: [q1s4k]", "shapes[0].spec", "expected a batch spec, got ['q1s4k']"),
    ("spec: 7z", "shapes[0].spec", "invalid batch spec '7z'"),
    ("spec: q1s4k, weight: 0", "shapes[0].weight", "must be a finite number > 0, got 0"),
    ("spec: q1s4k, weight: -1", "shapes[0].weight", "must be a finite number > 0, got -1"),
    ("spec: q1s4k, weight: .nan", "shapes[0].weight", "must be a finite number > 0, got nan"),
    ("spec: q1s4k, weight: .inf", "shapes[0].weight", "must be a finite number > 0, got inf"),
    ("spec: q1s4k, weight: x", "shapes[0].weight", "expected a number, got 'x'"),
    ("spec: q1s4k, weight: true", "shapes[0].weight", "must be a finite number > 0, got True"),
    ("spec: q1s4k, weight: [1]", "shapes[0].weight", "expected a number, got [1]"),
    ("spec: q1s4k, share: 2", "shapes[0].share", "unknown key; allowed: spec, weight"),
    ("weight: 2", "shapes[0].spec", "missing"),
]


@pytest.mark.parametrize(("entry", "key", "reason"), BAD_YAML, ids=[b[0] for b in BAD_YAML])
def test_bad_yaml_entry(tmp_path: Path, entry: str, key: str, reason: str):
    p = tmp_path / "traffic.yaml"
    p.write_text(HEAD + f"shapes:\n  - {{{entry}}}\n  - {{spec: 8q1s4k}}\n")
    with pytest.raises(DataFileError) as e:
        load_traffic(p)
    assert (e.value.path, e.value.key) == (str(p), key)
    assert str(e.value).startswith(f"{p}: {key}: {reason}")
    assert "\n" not in str(e.value)


BAD_YAML_FILES = [
    ("schema_version: 1\nshapes: []\n", "shapes", "no shapes"),
    ("schema_version: 1\nshapes: {q1s4k: 1}\n", "shapes", "expected a list of {spec, weight}"),
    ("schema_version: 1\nshapes:\n  - q1s4k\n", "shapes[0]", "expected a mapping, got str"),
    ("schema_version: 1\nkind: mla-tune/tuning-table\nshapes: [{spec: q1s4k}]\n", "kind",
     "is 'mla-tune/tuning-table', expected 'mla-tune/traffic'"),
    ("schema_version: 2\nshapes: [{spec: q1s4k}]\n", "schema_version", "is 2, this mla-tune reads"),
    ("shapes: [{spec: q1s4k}]\n", "schema_version", "is None"),
    ("schema_version: 1\n", "shapes", "missing"),
    ("schema_version: 1\nshapes: [{spec: q1s4k}]\nweights: 1\n", "weights", "unknown key"),
    ("- q1s4k\n", "", "expected a mapping at the top level"),
    ("", "", "expected a mapping at the top level"),
    ("schema_version: 1\nshapes: [{spec: q1s4k\n", "line 3", "not valid YAML"),
]


@pytest.mark.parametrize(("text", "key", "reason"), BAD_YAML_FILES, ids=range(len(BAD_YAML_FILES)))
def test_bad_yaml_file(tmp_path: Path, text: str, key: str, reason: str):
    p = tmp_path / "traffic.yaml"
    p.write_text(text)
    with pytest.raises(DataFileError) as e:
        load_traffic(p)
    assert e.value.key == key and e.value.path == str(p)
    assert reason in e.value.reason
    assert str(e.value).startswith(f"{p}: {key + ': ' if key else ''}") and "\n" not in str(e.value)


BAD_CSV = [
    ("spec,weight\nq1s4k,0\n", "row 2.weight", "must be a finite number > 0, got '0'"),
    ("spec,weight\nq1s4k,1\n8q1s4k,-1\n", "row 3.weight", "must be a finite number > 0, got '-1'"),
    ("spec,weight\nq1s4k,nan\n", "row 2.weight", "must be a finite number > 0, got 'nan'"),
    ("spec,weight\nq1s4k,x\n", "row 2.weight", "expected a number, got 'x'"),
    ("spec,weight\nq1s4k,\n", "row 2.weight", "expected a number, got ''"),
    ("spec,weight\nq1s4k\n", "row 2.weight", "expected a number, got None"),
    ("spec,weight\n7z,1\n", "row 2.spec", "invalid batch spec '7z'"),
    ("spec,weight\nq1s4k,1,9\n", "row 2", "3 values; expected 2 (spec,weight)"),
    ("spec,weight\nq1s4k,1\n8q1s4k,1,9,9\n", "row 3", "4 values; expected 2 (spec,weight)"),
    ("spec,w\nq1s4k,1\n", "header", "expected columns spec,weight, got spec,w"),
    ("spec,weight,note\nq1s4k,1,x\n", "header", "expected columns spec,weight, got spec,weight,note"),
    ("shape,weight\n", "header", "expected columns spec,weight, got shape,weight"),  # a header alone
    ("spec,weight\n", "shapes", "no shapes"),
    ("", "shapes", "no shapes"),
]


@pytest.mark.parametrize(("text", "key", "reason"), BAD_CSV, ids=range(len(BAD_CSV)))
def test_bad_csv(tmp_path: Path, text: str, key: str, reason: str):
    p = tmp_path / "traffic.csv"
    p.write_text(text)
    with pytest.raises(DataFileError) as e:
        load_traffic(p)
    assert (e.value.path, e.value.key) == (str(p), key)
    assert str(e.value).startswith(f"{p}: {key}: {reason}") and "\n" not in str(e.value)


def test_not_a_regular_file(tmp_path: Path):
    for p in (tmp_path / "missing.yaml", tmp_path):
        with pytest.raises(DataFileError) as e:
            load_traffic(p)
        assert str(e.value) == f"{p}: not a regular file"


def test_csv_that_is_not_text(tmp_path: Path):
    p = tmp_path / "t.csv"
    p.write_bytes(b"spec,weight\n\xff\xfe,1\n")
    with pytest.raises(DataFileError) as e:
        load_traffic(p)
    assert str(e.value).startswith(f"{p}: is not UTF-8 text (byte 0xff") and "\n" not in str(e.value)


def test_too_many_shapes(tmp_path: Path):
    p = tmp_path / "t.csv"
    p.write_text("spec,weight\n" + "q1s4k,1\n" * 10_001)
    with pytest.raises(DataFileError, match="shapes: 10001 shapes; at most 10000"):
        load_traffic(p)
