"""Numbers, paths and recordings the CLI takes: a bad one is one line and exit 2, refused before anything is written."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mla_tune import catalog
from mla_tune.cli import app
from mla_tune.errors import BatchSpecError, UsageError
from mla_tune.tables.export import write_atomic
from mla_tune.batch_spec import parse as bounded_shape

cli = CliRunner()
ROOT = Path(__file__).resolve().parent.parent
TABLE = ROOT / "tests" / "golden" / "table.yaml"
STUDY = ["study", "--backend", "TRITON_MLA", "--workload", "spec:8q1s1k", "--runner", "replay:nowhere"]


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLA_TUNE_STORAGE", raising=False)
    (tmp_path / "out").mkdir()
    os.mkfifo(tmp_path / "fifo.yaml")
    return tmp_path


def one_line(result) -> str:
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert lines[0].startswith("mla-tune: error: ")
    return lines[0]


def nothing_written(tmp: Path) -> bool:
    return sorted(p.name for p in tmp.iterdir()) == ["fifo.yaml", "out"] and not list((tmp / "out").iterdir())


@pytest.mark.parametrize("args, words", [
    (["--timeout", "nan"], "'--timeout': nan is not a number of seconds"),
    (["--timeout", "inf"], "'--timeout': inf is not"),
    (["--timeout", "-5"], "'--timeout': -5 is not"),
    (["--timeout", "0"], "'--timeout': 0 is not"),
    (["--seed", "-1"], "'--seed'"),
    (["--seed", str(2**32)], "'--seed'"),
    (["--trials", "0"], "'--trials'"),
    (["--tp", "0"], "'--tp'"),
    (["--confirm-rounds", "1"], "'--confirm-rounds'"),
    (["--confirm-top", "0"], "'--confirm-top'"),
    (["--workload", "spec:99999999q1s4k"], "99999999 requests in one batch; at most 4096"),
    (["--workload", "spec:q99999k"], "tokens per request; at most 1048576"),
    (["--workload", "spec:4096q1s32k"], "tokens in one batch; at most 67108864"),
    (["--workload", "spec:" + "9" * 5000 + "q1"], "longer than 512 characters"),
    (["--export", "out"], "'--export': cannot write out: it is a directory"),
    (["--export", "fifo.yaml"], "it is not a regular file"),
    (["--export", "fifo.yaml/t.yaml"], "fifo.yaml"),
])
def test_bad_study_numbers_and_paths_are_one_line_before_anything_runs(in_tmp, args, words):
    r = cli.invoke(app, [*STUDY, *args])
    assert words in one_line(r) and "--help" in one_line(r)
    assert nothing_written(in_tmp)


@pytest.mark.parametrize("args", [
    ["export", "-o", "out", "--backend", "TRITON_MLA"],
    ["deploy", str(TABLE), "-o", "out", "--vllm", "0.20.0"],
    ["sweep", "--backend", "TRITON_MLA", "--workload", "decode_1k", "-o", "out", "--runner", "replay:x"],
    ["sweep", "--backend", "TRITON_MLA", "--workload", "decode_1k", "-o", "fifo.yaml", "--runner", "replay:x"],
])
def test_an_output_that_is_a_directory_or_fifo_is_refused(in_tmp, args):
    assert "cannot write" in one_line(cli.invoke(app, args)) and nothing_written(in_tmp)


@pytest.mark.parametrize("args, words", [
    (["show", "out"], "'table': out: is a directory"),
    (["show", "fifo.yaml"], "fifo.yaml: is a FIFO"),
    (["flags", "fifo.yaml"], "is a FIFO"),
    (["verify", "out", "--runner", "replay:x"], "is a directory"),
    (["verify", str(TABLE), "--rounds", "1", "--runner", "replay:x"], "--rounds 1: need at least 2"),
    (["deploy", str(TABLE), "out", "-o", "p.yaml"], "out: is a directory"),
    (["deploy", str(TABLE), "-o", "p.yaml", "--traffic", "fifo.yaml"], "'--traffic': fifo.yaml: is a FIFO"),
    (["deploy", "/dev/zero", "-o", "p.yaml"], "/dev/zero: is a device"),
])
def test_an_input_that_is_not_a_file_is_refused_without_opening_it(in_tmp, args, words):
    assert words in one_line(cli.invoke(app, args))  # a FIFO opened for reading would hang here
    assert not (in_tmp / "p.yaml").exists()


HEADER = ('{"kind": "mla-tune/sweep", "schema_version": 1, "environment": {"runner": "vllm", "gpu": {"name": "X", '
          '"compute_capability": "9.0", "sm_count": 1}}}\n')
RECORD = ('{"backend": "TRITON_MLA", "model": {}, "kv_cache_dtype": "auto", "shape": "q1s1k", "config": {}, '
          '"status": "ok", "samples_ms": SAMPLES}\n')


@pytest.mark.parametrize("name, text, words", [
    ("nan.jsonl", HEADER + RECORD.replace("SAMPLES", "[0.1, NaN]"), "line 2: not a sweep record (NaN is not"),
    ("neg.jsonl", HEADER + RECORD.replace("SAMPLES", "[-0.1]"), "line 2.samples_ms[0]: is -0.1"),
    ("empty.jsonl", HEADER + RECORD.replace("SAMPLES", "[]"), "line 2.samples_ms: empty, but the status is ok"),
    ("status.jsonl", HEADER + RECORD.replace("SAMPLES", "[1]").replace('"ok"', '"fine"'), "line 2.status"),
    ("deep.jsonl", HEADER + "[" * 100000 + "\n", "line 2: not a sweep record"),
    ("bin.jsonl", "\x00\x01", "a NUL byte at offset 0"),
    ("backends.jsonl", HEADER.replace("}}}", '}}, "backends": [7]}'), "line 1.backends[0]: expected a mapping"),
])
def test_a_bad_recording_is_one_line(in_tmp, name, text, words):
    (in_tmp / "rec").mkdir()
    (in_tmp / "rec" / name).write_text(text)
    assert words in one_line(cli.invoke(app, ["backends", "--runner", f"replay:{in_tmp / 'rec'}"]))


@pytest.mark.parametrize("where, words", [
    ("fifo.yaml", "is a FIFO"), ("/dev/zero", "is a device"), ("fifos", "fifos/a.jsonl: is a FIFO"),
])
def test_replay_paths_that_are_no_files_are_one_line(in_tmp, where, words):
    (in_tmp / "fifos").mkdir()
    os.mkfifo(in_tmp / "fifos" / "a.jsonl")
    assert words in one_line(cli.invoke(app, ["backends", "--runner", f"replay:{where}"]))


def test_an_os_error_the_library_did_not_wrap_is_one_line(monkeypatch):
    def full(*_: object) -> None:
        raise OSError(28, "No space left on device", "results/t.yaml")

    monkeypatch.setattr(catalog, "list_workloads", full)
    r = cli.invoke(app, ["workloads"])
    assert r.exit_code == 1 and r.output.strip() == "mla-tune: error: No space left on device: results/t.yaml"


def test_the_spec_bounds():
    assert len(bounded_shape("4096q1s4k").requests) == 4096 and bounded_shape("q1024k").num_tokens == 1 << 20
    assert len(bounded_shape("256q1s64k_q2ks8k").requests) == 257
    for spec in ("4097q1s4k", "2048q1s4k_2049q1", "q1025k", "q1s1025k", "1024q1s64k_1024q1s1k"):
        with pytest.raises(BatchSpecError):
            bounded_shape(spec)


def test_write_atomic_refuses_a_directory(in_tmp):
    with pytest.raises(UsageError, match="cannot write .*out: it is a directory"):
        write_atomic(in_tmp / "out", "x")
    assert nothing_written(in_tmp)
