"""Several backends, workloads and TPs in one `mla-tune study`: one runner (vLLM imported and its worker started
once), every study in order, and bad input refused before anything is written."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from mla_tune import api
from mla_tune.cli import app
from mla_tune.errors import RunnerUnavailableError, UnknownNameError, UsageError
from mla_tune.runners import register_runner

from .fakes import FakeRunner

OPT = {"num_kv_splits": 4, "max_num_splits": 8}


class CountedRunner(FakeRunner):
    made = 0

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        type(self).made += 1


@pytest.fixture(autouse=True)
def counted(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLA_TUNE_STORAGE", raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    CountedRunner.made = 0
    register_runner("counted", lambda arg: CountedRunner(optimum=OPT))
    return CountedRunner


def labels(outcome):
    return [s.name.split("/", 1)[1] for s in outcome.summaries]


def test_one_call_runs_every_backend_tp_and_workload_through_one_runner(tmp_path):
    out = api.run_study(backend=["TRITON_MLA", "FLASH_ATTN_MLA"], workload=["spec:8q1s4k", "spec:64q1s1k"],
                        tp=[1, 8], runner="counted", storage=str(tmp_path / "s.journal"), n_trials=3,
                        confirm_top=1, confirm_rounds=2)
    assert CountedRunner.made == 1
    assert labels(out) == [f"deepseek-v3-tp{tp}/{b}/{spec}" for b in ("TRITON_MLA", "FLASH_ATTN_MLA")
                           for tp in (1, 8) for spec in ("8q1s4k", "64q1s1k")]
    assert all(s.measured == 3 and s.confirmation is not None for s in out.summaries)
    again = api.run_study(backend=["TRITON_MLA", "FLASH_ATTN_MLA"], workload=["spec:8q1s4k", "spec:64q1s1k"],
                          tp=[1, 8], runner="counted", storage=str(tmp_path / "s.journal"), n_trials=3,
                          confirm_top=1, confirm_rounds=2)
    assert [s.measured for s in again.summaries] == [3] * 8  # resumed: nothing measured twice


def test_a_shape_two_workloads_share_is_one_study(tmp_path):
    out = api.run_study(backend="TRITON_MLA", workload=["decode_4k", "spec:8q1s4k,64q1s4k"], runner="counted",
                        storage=str(tmp_path / "s.journal"), n_trials=2, confirm_top=1, confirm_rounds=2)
    assert labels(out) == [f"deepseek-v3-tp1/TRITON_MLA/{b}q1s4k" for b in ("", "8", "32", "64", "128", "256")]


@pytest.mark.parametrize("kw, error, words", [
    ({"backend": ["TRITON_MLA", "FLASH_MLA"]}, UnknownNameError, "FLASH_MLA"),
    ({"workload": ["spec:8q1s4k", "decode_5k"]}, UnknownNameError, "decode_5k"),
    ({"backend": ["TRITON_MLA", "CUTLASS_MLA"]}, RunnerUnavailableError, "CUTLASS_MLA cannot run here"),
    ({"workload": ["spec:8q1s4k@1", "spec:8q1s4k@3,64q1s4k"]}, UsageError, "different weights"),
    ({"backend": []}, UsageError, "at least one backend"),
])
def test_bad_input_in_any_of_them_writes_nothing(tmp_path, kw, error, words):
    args = {"backend": "TRITON_MLA", "workload": "spec:8q1s4k", "runner": "counted",
            "storage": str(tmp_path / "s.journal"), **kw}
    with pytest.raises(error, match=words):
        api.run_study(**args)
    assert not (tmp_path / "s.journal").exists()


def test_the_cli_takes_repeated_options_and_refuses_one_export_for_several_tables(tmp_path):
    cli = CliRunner()
    base = ["study", "--backend", "TRITON_MLA", "--backend", "FLASH_ATTN_MLA", "--workload", "spec:8q1s4k",
            "--workload", "spec:64q1s1k", "--runner", "counted", "--trials", "2", "--confirm-top", "1",
            "--confirm-rounds", "2"]
    r = cli.invoke(app, base)
    assert r.exit_code == 0, r.output
    assert CountedRunner.made == 1
    for name in ("TRITON_MLA/8q1s4k", "TRITON_MLA/64q1s1k", "FLASH_ATTN_MLA/8q1s4k", "FLASH_ATTN_MLA/64q1s1k"):
        assert name in r.output
    r = cli.invoke(app, [*base, "--export", "t.yaml"])
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and "one backend at one TP" in lines[0], r.output
    assert not (tmp_path / "t.yaml").exists()
    r = cli.invoke(app, ["study", "--backend", "TRITON_MLA", "--workload", "spec:8q1s4k", "--workload",
                         "spec:64q1s1k", "--tp", "1", "--runner", "counted", "--trials", "2", "--confirm-top", "1",
                         "--confirm-rounds", "2", "--export", "t.yaml"])
    assert r.exit_code == 0, r.output
    assert {"8q1s4k", "64q1s1k"} <= set((tmp_path / "t.yaml").read_text().split())  # both workloads' shapes


@pytest.mark.slow
def test_workers_share_the_studies_of_several_backends_and_workloads(tmp_path, monkeypatch):
    monkeypatch.setenv("MLA_TUNE_LOCK_DIR", str(tmp_path / "locks"))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    register_runner("fake-for-many", FakeRunner)  # tests.fakes:FakeRunner, imported by the workers
    par = api.run_study_parallel(gpus="0,1", backend=["TRITON_MLA", "FLASH_ATTN_MLA"],
                                 workload=["spec:8q1s4k", "spec:64q1s1k"], runner="fake-for-many",
                                 storage=str(tmp_path / "s.journal"), n_trials=3, confirm_top=1, confirm_rounds=2)
    assert not par.failed, par.workers
    assert sorted(labels(par.outcome)) == sorted(f"deepseek-v3-tp1/{b}/{spec}" for b in ("TRITON_MLA",
                                                 "FLASH_ATTN_MLA") for spec in ("8q1s4k", "64q1s1k"))
    assert all(s.measured == 3 for s in par.outcome.summaries)
