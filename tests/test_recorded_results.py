"""The committed H100 evidence stays readable, and the README's main job works on it without a GPU."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mla_tune.cli import app
from mla_tune.runners.replay import ReplayRunner
from mla_tune.tables.export import load_table

ROOT = Path(__file__).resolve().parent.parent
cli = CliRunner()


@pytest.fixture(autouse=True)
def wide(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")


def readme_main_job() -> list[list[str]]:
    """The mla-tune invocations of the README's first set-up command."""
    text = (ROOT / "README.md").read_text()
    line = next(ln for ln in text.splitlines() if ln.startswith("python -m pip install") and "mla-tune study" in ln)
    return [shlex.split(part)[1:] for part in line.split("&&") if part.strip().startswith("mla-tune")]


def test_readme_main_job_runs_on_the_recorded_sweeps(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for args in readme_main_job():
        args = [a.replace("replay:results/sweeps/", f"replay:{ROOT / 'results/sweeps'}/") for a in args]
        r = cli.invoke(app, args)
        assert r.exit_code == 0, r.output
    table = load_table(tmp_path / "results/demo/FLASH_ATTN_MLA-decode_4k.yaml")
    assert table["provenance"]["runner"] == "replay" and table["provenance"]["gpu"]["name"].startswith("NVIDIA H100")
    # what the study found on the GPU (results/h100/README.md): cap 1 from 64 requests up, vLLM's default below
    tuned = {e["shape"]: e["params"]["max_num_splits"] for e in table["entries"] if e["tuned"]}
    assert tuned == {"64q1s4k": 1, "128q1s4k": 1, "256q1s4k": 1}, tuned
    for e in table["entries"]:
        if e["tuned"]:
            assert e["ci"][1] - e["ci"][0] <= 0.01 and 1.04 < e["speedup"] < 1.13


def test_recorded_sweeps_replay():
    runner = ReplayRunner.open(str(ROOT / "results/sweeps/h100"))
    env = runner.environment()
    assert env.runner == "replay" and env.vllm == "0.20.0" and env.compute_capability == "9.0"
    assert len(runner.truth()) == 1747  # 868 (decode_4k, spec_decode, mixed, prefill_4k) + 879 long-context
    assert {s.name for s in runner.backends() if s.available and s.kind == "decode"} == {
        "FLASHMLA", "FLASH_ATTN_MLA", "TRITON_MLA"}


def test_recorded_studies_and_tables_are_readable():
    r = cli.invoke(app, ["show", "--storage", str(ROOT / "results/h100/studies.journal")])
    assert r.exit_code == 0 and len(re.findall(r"H100/deepseek-v3-tp[18]/", r.output)) == 102
    for path in sorted((ROOT / "results/h100/tables").glob("*.yaml")):
        t = load_table(path)
        assert t["provenance"]["runner"] == "vllm" and t["provenance"]["vllm"] == "0.20.0"
        assert len(t["entries"]) == 17
        r = cli.invoke(app, ["show", str(path)])
        assert r.exit_code == 0, r.output
