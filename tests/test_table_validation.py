"""Tables are checked once at load: a wrong type, a NaN, another backend's knob is one line naming file and key."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from mla_tune.cli import app
from mla_tune.errors import DataFileError, MlaTuneError
from mla_tune.tables.export import check_table, dump_yaml, load_table, write_table

GOLDEN = Path(__file__).parent / "golden" / "table.yaml"
ROOT = Path(__file__).resolve().parent.parent
TUNED = 2  # entries[2] of the golden table: 64q1s4k, tuned (max_num_splits 8)


def golden() -> dict[str, Any]:
    return yaml.safe_load(GOLDEN.read_text())


def edit(path: str, value: Any, table: dict[str, Any] | None = None) -> dict[str, Any]:
    """The golden table with ``path`` (dotted, ``[i]`` for list items) set to ``value`` (``...``: deleted)."""
    t = copy.deepcopy(table or golden())
    keys = [int(k) if k.isdigit() else k for k in path.replace("[", ".").replace("]", "").split(".")]
    node = t
    for k in keys[:-1]:
        node = node[k]
    if value is ...:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return t


def write(tmp_path: Path, table: dict[str, Any]) -> Path:
    path = tmp_path / "t.yaml"
    path.write_text(dump_yaml(table))
    return path


def test_the_golden_and_the_recorded_tables_load():
    assert load_table(GOLDEN)["backend"] == "FLASH_ATTN_MLA"
    for path in sorted((ROOT / "results").glob("*/tables/*.yaml")):
        load_table(path)


BAD = [  # (path, value, key named, words); these printed "xnan [-inf, inf]" or ended in tracebacks before
    (f"entries[{TUNED}].speedup", float("nan"), f"entries[{TUNED}].speedup", "is nan, expected a finite number > 0"),
    (f"entries[{TUNED}].ci", [float("-inf"), float("inf")], f"entries[{TUNED}].ci[0]", "finite"),
    (f"entries[{TUNED}].ci", [1.2], f"entries[{TUNED}].ci", "expected [low, high]"),
    (f"entries[{TUNED}].ci", [1.2, 1.1], f"entries[{TUNED}].ci", "low 1.2 is above high 1.1"),
    (f"entries[{TUNED}].speedup", "fast", f"entries[{TUNED}].speedup", "expected a number, got 'fast'"),
    (f"entries[{TUNED}].tuned", "yes", f"entries[{TUNED}].tuned", "expected true or false"),
    (f"entries[{TUNED}].params", [{"max_num_splits": 8}], f"entries[{TUNED}].params", "expected a mapping"),
    (f"entries[{TUNED}].params.max_num_splits", "8", f"entries[{TUNED}].params.max_num_splits", "positive integer"),
    (f"entries[{TUNED}].params.num_kv_splits", 4, f"entries[{TUNED}].params.num_kv_splits", "does not apply"),
    (f"entries[{TUNED}].params.max_num_splits", 10**9, f"entries[{TUNED}].params.max_num_splits", "search space"),
    (f"entries[{TUNED}].default_params.max_num_splits", ..., f"entries[{TUNED}].params.max_num_splits",
     "unexpected: an entry's configs set the knobs of its default_params"),
    (f"entries[{TUNED}].latency_ms", 0.05, f"entries[{TUNED}].latency_ms", "expected a mapping"),
    (f"entries[{TUNED}].latency_ms.best", -1, f"entries[{TUNED}].latency_ms.best", "> 0"),
    (f"entries[{TUNED}].latency_ms", ..., f"entries[{TUNED}].latency_ms", "missing: a tuned entry records it"),
    (f"entries[{TUNED}].shape", "64q1x4k", f"entries[{TUNED}].shape", "segment '64q1x4k'"),
    (f"entries[{TUNED}].shape", "99999999q1s4k", f"entries[{TUNED}].shape", "requests in one batch; at most 4096"),
    (f"entries[{TUNED}].shape", "64q1s4096", f"entries[{TUNED}].shape", "write '64q1s4096' as '64q1s4k'"),
    (f"entries[{TUNED}].shape", "q4k", f"entries[{TUNED}].kind", "but q4k is a prefill batch"),
    (f"entries[{TUNED}].shape", 64, f"entries[{TUNED}].shape", "expected a batch spec string"),
    (f"entries[{TUNED}].trials.measured", -3, f"entries[{TUNED}].trials.measured", "integer in [0,"),
    (f"entries[{TUNED}].samples", [180], f"entries[{TUNED}].samples", "expected a mapping"),
    (f"entries[{TUNED}].ci_level", 97.5, f"entries[{TUNED}].ci_level", "finite number (0, 1]"),
    ("entries[1].best_candidate.speedup", float("nan"), "entries[1].best_candidate.speedup", "is nan"),
    ("entries[1].best_candidate.params", "fast", "entries[1].best_candidate.params", "expected a mapping"),
    ("entries[1].shape", "64q1s4k", "entries[2]", "64q1s4k is also entries[1]"),
    ("entries[0].tuned", True, "entries[0].tuned", "is true, but the entry records an error"),
    ("entries", {"q1s4k": {}}, "entries", "expected a list of entries"),
    ("backend", "FLASH_MLA", "backend", "unknown backend 'FLASH_MLA'"),
    ("backend", "TRITON_MLA", "entries[0].params.max_num_splits", "max_num_splits does not apply to TRITON_MLA"),
    ("kv_cache_dtype", "int4", "kv_cache_dtype", "known: auto, fp8"),
    ("model.tp", 0, "model.tp", "integer in [1, 1024]"),
    ("model.num_q_heads", "16", "model.num_q_heads", "expected an integer"),
    ("provenance.gpu", "H100", "provenance.gpu", "expected a mapping"),
    ("provenance.gpu.sm_count", 1.5, "provenance.gpu.sm_count", "expected an integer"),
    ("provenance.vllm", 0.2, "provenance.vllm", "expected a string"),
    ("objective", "fastest", "objective", "known: per-shape, mix, mix+per-shape"),
]


@pytest.mark.parametrize("path, value, key, words", BAD, ids=[f"{b[0]}={b[1]!r}"[:60] for b in BAD])
def test_a_bad_value_is_one_error_naming_file_and_key(tmp_path, path, value, key, words):
    if path == "entries[0].tuned":  # the golden q1s4k failed confirmation; make it a failed shape
        value_table = edit("entries[0].error", "timeout")
        table = edit(path, value, value_table)
    else:
        table = edit(path, value)
    file = write(tmp_path, table)
    with pytest.raises(DataFileError) as e:
        load_table(file)
    assert e.value.path == str(file) and e.value.key == key, str(e.value)
    assert words in e.value.reason and "\n" not in str(e.value)


@pytest.mark.parametrize("command", [
    ["show"], ["flags", "--vllm", "0.20.0"], ["deploy", "-o", "p.yaml", "--vllm", "0.20.0"],
    ["verify", "--runner", f"replay:{ROOT / 'results' / 'sweeps' / 'h100'}", "--rounds", "2"],
])
@pytest.mark.parametrize("path, value", [
    (f"entries[{TUNED}].ci", [1.2]),  # IndexError before
    (f"entries[{TUNED}].params", [{"max_num_splits": 8}]),  # AttributeError before
    (f"entries[{TUNED}].speedup", "fast"),  # a format error before
    (f"entries[{TUNED}].latency_ms", 0.05),  # AttributeError before
    (f"entries[{TUNED}].speedup", float("nan")),  # printed as xnan before
    ("backend", "TRITON_MLA"),  # flags printed arguments mixing two backends before
])
def test_every_table_command_refuses_in_one_line_with_exit_2(tmp_path, monkeypatch, command, path, value):
    monkeypatch.chdir(tmp_path)
    file = write(tmp_path, edit(path, value))
    r = CliRunner().invoke(app, [command[0], str(file), *command[1:]])
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith(f"mla-tune: error: {file}: "), r.output
    assert not (tmp_path / "p.yaml").exists()


def mix_table() -> dict[str, Any]:
    t = golden()
    fa = t["entries"][0]["default_params"]
    t["entries"].append({"workload": "mixed", "shapes": [{"spec": "q1s4k", "weight": 1.0},
                                                           {"spec": "8q1s4k", "weight": 2.0}],
                         "tuned": False, "trials": {"measured": 4, "failed": 0, "reused": 0},
                         "params": [fa, fa], "default_params": [fa, fa], "note": "kept"})
    return t


def test_a_mix_entry_lists_one_config_per_shape():
    assert check_table(Path("m.yaml"), mix_table())["entries"][3]["workload"] == "mixed"
    for path, value, key, words in [
        ("entries[3].params", {"cuda_graphs": True}, "entries[3].params", "expected a list of 2 configs"),
        ("entries[3].shapes", [], "entries[3].shapes", "empty"),
        ("entries[3].shapes[1].weight", float("inf"), "entries[3].shapes[1].weight", "finite"),
        ("entries[3].shapes[0].spec", "q1s4k_", "entries[3].shapes[0].spec", "invalid batch spec"),
        ("entries[3].kind", "mixed", "entries[3].kind", "only a shape entry has one"),
        ("entries[3].shape", "q1s4k", "entries[3]", "needs a shape or a workload (a mix entry), not both"),
    ]:
        with pytest.raises(DataFileError) as e:
            check_table(Path("m.yaml"), edit(path, value, mix_table()))
        assert e.value.key == key and words in e.value.reason, str(e.value)


def test_a_table_that_would_be_refused_is_not_written(tmp_path):
    with pytest.raises(MlaTuneError, match=r"not writing .*t\.yaml: entries\[2\]\.speedup: is nan"):
        write_table(edit(f"entries[{TUNED}].speedup", float("nan")), tmp_path / "t.yaml")
    assert not list(tmp_path.iterdir())


def test_atomic_writes_get_the_usual_file_mode(tmp_path):
    """mkstemp's 0600 would keep a table from the serving hosts' users and a report from its readers."""
    import os

    from mla_tune.tables.export import write_atomic

    old = os.umask(0o022)
    try:
        path = write_atomic(tmp_path / "t.yaml", "x: 1\n")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


# -- an entry agrees with itself: a tampered number is refused, naming the entry ------------------------------------
@pytest.mark.parametrize("path, value, key, words", [
    # the hostile pass's case: x3.0 shown and deployed while its own interval says [1.047, 1.077]
    (f"entries[{TUNED}].speedup", 3.0, f"entries[{TUNED}].speedup", "is x3, outside its own interval [1.047, 1.077]"),
    (f"entries[{TUNED}].ci", [2.9, 3.1], f"entries[{TUNED}].speedup", "outside its own interval"),
    (f"entries[{TUNED}].latency_ms.best", 0.017, f"entries[{TUNED}].speedup", "its latencies say x3.012"),
    (f"entries[{TUNED}].speedup", 0.9, f"entries[{TUNED}].speedup", "outside its own interval"),
    (f"entries[{TUNED}].ci", [0.99, 1.077], f"entries[{TUNED}].ci", "a tuned entry's interval lies above 1"),
    ("entries[0].speedup", 1.3, "entries[0].speedup", "keeps vLLM's default (tuned: false), which is x1"),
    ("entries[0].latency_ms.best", 0.01, "entries[0].latency_ms.best", "keeps vLLM's default"),
    ("entries[0].params.max_num_splits", 8, "entries[0].params", "differ from default_params"),
    ("entries[1].best_candidate.speedup", 2.0, "entries[1].best_candidate.speedup", "outside its own interval"),
])
def test_an_entry_that_contradicts_itself_is_refused_naming_it(tmp_path, path, value, key, words):
    file = write(tmp_path, edit(path, value))
    with pytest.raises(DataFileError) as e:
        load_table(file)
    assert e.value.key == key and words in e.value.reason, str(e.value)
    label = {"entries[0]": "q1s4k", "entries[1]": "8q1s4k", f"entries[{TUNED}]": "64q1s4k"}[key.split(".")[0]]
    assert f"({label}): the entry contradicts itself; the table was edited or damaged" in e.value.reason


def test_tuned_speedups_may_differ_from_their_latencies_by_the_rounds_noise(tmp_path):
    """The speedup is a geometric mean of per-round ratios, the latencies medians: they differ in real tables."""
    ok = edit(f"entries[{TUNED}].latency_ms.best", 0.0512 / 1.10)  # x1.10 by the medians, x1.062 by the rounds
    assert load_table(write(tmp_path, ok))["entries"][TUNED]["speedup"] == 1.062


@pytest.mark.parametrize("command", [
    ["show"], ["flags", "--vllm", "0.20.0"], ["deploy", "-o", "p.yaml", "--vllm", "0.20.0"], ["diff", "SELF"],
    ["plot", "-o", "plots"], ["report", "-o", "r.html"],
    ["verify", "--runner", f"replay:{ROOT / 'results' / 'sweeps' / 'h100'}", "--rounds", "2"],
])
def test_no_command_shows_or_serves_a_tampered_speedup(tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    file = write(tmp_path, edit(f"entries[{TUNED}].speedup", 3.0))
    args = [command[0], str(file), *[str(file) if a == "SELF" else a for a in command[1:]]]
    r = CliRunner().invoke(app, args)
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 2 and len(lines) == 1, r.output
    assert lines[0] == (f"mla-tune: error: {file}: entries[{TUNED}].speedup: is x3, outside its own interval "
                        "[1.047, 1.077] (64q1s4k): the entry contradicts itself; the table was edited or damaged, "
                        "export it again")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.yaml"]  # nothing written
