"""Hints that point the right way: each refusal names the fix that fits what the user gave."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mla_tune import runners
from mla_tune.cli import app
from mla_tune.errors import RunnerUnavailableError
from mla_tune.runners.vllm import HINT

cli = CliRunner()
ROOT = Path(__file__).resolve().parent.parent
H200_PROFILE = ROOT / "results" / "h200" / "profile-FLASH_ATTN_MLA.yaml"
H100_TABLE = ROOT / "results" / "h100" / "tables" / "TRITON_MLA-deepseek-v3-tp1.yaml"


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLA_TUNE_STORAGE", raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    return tmp_path


def error_line(result) -> str:
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("mla-tune: error: "), result.output
    return lines[0]


@pytest.fixture
def no_torch(monkeypatch):
    """The vllm runner as on a machine without torch, with its own hint (which names the H100 recordings)."""
    def refuse(arg):
        raise RunnerUnavailableError("torch is not installed", hint=HINT)

    monkeypatch.setitem(runners._REGISTRY, "vllm", refuse)


def _recordings(tmp: Path, *gpus: str) -> None:
    for gpu in gpus:
        (tmp / "results" / "sweeps" / gpu).mkdir(parents=True)


def test_verify_of_an_h200_profile_suggests_the_h200_recordings(in_tmp, no_torch):
    _recordings(in_tmp, "h100", "h200")
    line = error_line(cli.invoke(app, ["verify", str(H200_PROFILE)]))
    assert line.endswith("or replay the H200's recordings: --runner replay:results/sweeps/h200)")
    assert "h100" not in line
    line = error_line(cli.invoke(app, ["verify", str(H100_TABLE)]))  # a table: its provenance's GPU
    assert line.endswith("--runner replay:results/sweeps/h100)")


def test_verify_without_recordings_of_that_gpu_suggests_none(in_tmp, no_torch):
    _recordings(in_tmp, "h100")
    r = cli.invoke(app, ["verify", str(H200_PROFILE)])
    line = error_line(r)
    assert r.exit_code == 1 and "torch is not installed" in line
    assert line.endswith("; no H200 recordings in results/sweeps to replay)") and "--runner replay:" not in line


def test_show_of_a_journal_or_sqlite_storage_says_to_use_storage(in_tmp):
    journal = in_tmp / "studies.journal"
    journal.write_text('{"op_code":0,"worker_id":"w","study_name":"H100/deepseek-v3-tp1/FLASHMLA/8q1s4k",'
                       '"directions":[1]}\n')
    r = cli.invoke(app, ["show", str(journal)])
    assert r.exit_code == 2 and error_line(r) == (
        f"mla-tune: error: {journal}: is an Optuna journal (a study storage), not YAML: list its studies with "
        f"`mla-tune show --storage {journal}`")
    assert "--storage" in error_line(cli.invoke(app, ["flags", str(journal)]))  # every command reading YAML
    db = in_tmp / "studies.db"
    sqlite3.connect(db).execute("create table t (a)").connection.commit()
    assert error_line(cli.invoke(app, ["show", "studies.db"])).endswith(
        "list its studies with `mla-tune show --storage sqlite:///studies.db`")


def test_show_of_a_journal_over_the_yaml_size_limit_still_says_what_it_is(in_tmp, monkeypatch):
    from mla_tune import _yaml

    monkeypatch.setattr(_yaml, "MAX_BYTES", 100)
    journal = in_tmp / "big.journal"
    journal.write_text('{"op_code":0,"worker_id":"w","study_name":"s","directions":[1]}\n' * 10)
    assert "is an Optuna journal" in error_line(cli.invoke(app, ["show", str(journal)]))


@pytest.mark.parametrize("workload", ["64q1s4k", "8q1s4k@3,64q1s4k"])
def test_a_bare_batch_spec_as_workload_gets_the_spec_prefix_hint(in_tmp, workload):
    r = cli.invoke(app, ["study", "--backend", "FLASHMLA", "--workload", workload, "--runner", "replay:nowhere"])
    line = error_line(r)
    assert r.exit_code == 2 and f"unknown workload '{workload}'" in line
    assert line.endswith(f"(batch shapes are given as spec:{workload})")
    assert "spec:" not in error_line(cli.invoke(app, ["study", "--backend", "FLASHMLA", "--workload", "decode_5k",
                                                       "--runner", "replay:nowhere"]))  # a misspelt name: no hint
    assert not list(in_tmp.iterdir())


def test_a_context_without_k_is_refused_with_the_fix(in_tmp):
    r = cli.invoke(app, ["study", "--backend", "FLASHMLA", "--workload", "spec:64q1s4", "--runner", "replay:nowhere"])
    line = error_line(r)
    assert r.exit_code == 2 and "a context of 4 tokens: for 4096 write s4k" in line and "s4t" in line
    assert not list(in_tmp.iterdir())


def test_deploy_of_tables_of_two_engines_names_the_field_that_differs(in_tmp):
    r = cli.invoke(app, ["deploy", str(ROOT / "results/h200/tables/FLASHMLA-deepseek-v3-tp1.yaml"),
                         str(ROOT / "results/h100/tables/FLASHMLA-deepseek-v3-tp1.yaml"), "-o", "p.yaml"])
    assert r.exit_code == 2 and error_line(r).startswith(
        "mla-tune: error: the tables differ in GPU NVIDIA H200 vs NVIDIA H100 80GB HBM3 (table 1 vs table 2)")
    assert "(" not in error_line(r).split("differ in ")[1].split(" (table")[0]  # no raw tuple
    assert not (in_tmp / "p.yaml").exists()
