"""Hostile inputs, one section per class of issue 22: each test feeds what a hostile pass fed and checks the
guarantee the README's "What survives what" names (paths stay in their folder, tampered tables are refused, one
line instead of a traceback, bounded rounds, no terminal control sequences)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from mla_tune import api
from mla_tune.cli import app
from mla_tune.runners import register_runner

from .fakes import FakeRunner

ROOT = Path(__file__).resolve().parent.parent
TRITON_H200 = ROOT / "results/h200/run1/tables/TRITON_MLA-deepseek-v3-tp1.yaml"
cli = CliRunner()


def one_error_line(result) -> str:
    """The result's output is one ``mla-tune: error:`` line (no traceback) and the exit is non-zero."""
    assert result.exit_code != 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [x for x in result.output.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("mla-tune: error: "), result.output
    return lines[0]


def edited(src: Path, dst: Path, edit) -> Path:
    data = yaml.safe_load(src.read_text())
    edit(data)
    dst.write_text(yaml.safe_dump(data, sort_keys=True, allow_unicode=True))
    return dst


def pngs(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.png"))


# -- 1. file names built from data stay inside the output folder ---------------------------------------------------
def _named(tmp_path: Path, gpu: str) -> Path:
    def edit(t):
        t["provenance"]["gpu"]["name"] = gpu

    return edited(TRITON_H200, tmp_path / "tables" / "TRITON_MLA-deepseek-v3-tp1.yaml", edit)


@pytest.mark.parametrize("gpu", ["NVIDIA ../../../../escaped", "/abs/escaped", "NVIDIA ..", "H100\x1b[2J/.."])
def test_plot_writes_only_inside_its_output_folder_whatever_the_gpu_name(tmp_path, gpu):
    pytest.importorskip("matplotlib")
    (tmp_path / "tables").mkdir()
    table = _named(tmp_path, gpu if not gpu.startswith("/") else str(tmp_path) + gpu)
    out = tmp_path / "deep" / "er" / "plots"
    r = cli.invoke(app, ["plot", str(table), "-o", str(out)])
    assert r.exit_code == 0, r.output
    written = pngs(tmp_path)
    assert len(written) == 2 and all(p.parent == out for p in written), written
    assert all(not p.name.startswith((".", "-")) for p in written)


@pytest.fixture
def hostile_recording(tmp_path):
    """A replay recording (sweep) whose GPU name is a path out of wherever it is used."""
    d = tmp_path / "rec"
    api.run_sweep(backend="TRITON_MLA", workload="spec:8q1s4k", output=d / "s.jsonl", rounds=1,
                  runner=FakeRunner(optimum={"num_kv_splits": 4}))
    lines = (d / "s.jsonl").read_text().splitlines()
    header = json.loads(lines[0])
    header["environment"]["gpu"]["name"] = "NVIDIA ../../../../../../../../../../tmp/../" + str(tmp_path / "abs")
    (d / "s.jsonl").write_text("\n".join([json.dumps(header), *lines[1:]]) + "\n")
    return d


def test_a_replayed_study_of_a_hostile_gpu_name_attaches_plots_inside_its_artifact_folder(tmp_path, monkeypatch,
                                                                                          hostile_recording):
    pytest.importorskip("matplotlib")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("MLA_TUNE_STORAGE", raising=False)
    monkeypatch.setenv("COLUMNS", "300")
    r = cli.invoke(app, ["study", "--backend", "TRITON_MLA", "--workload", "spec:8q1s4k", "--runner",
                         f"replay:{hostile_recording}", "--storage", "s/studies.journal", "--confirm-rounds", "2"])
    assert r.exit_code == 0, r.output
    assert "attached plots to 1 study" in r.output
    artifacts = work / "s" / "studies.journal.artifacts"
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix not in (".jsonl",)]
    assert written and all(p.is_relative_to(work / "s") for p in written), written
    assert [p for p in artifacts.iterdir() if not p.name.startswith(".")]
    # the study is named by a safe GPU part, and `show` still says the studies were replayed
    shown = cli.invoke(app, ["show", "--storage", "s/studies.journal"])
    assert shown.exit_code == 0, shown.output
    assert "-replay/deepseek-v3-tp1/TRITON_MLA/8q1s4k" in shown.output and "../" not in shown.output
    assert "replay: replayed from samples recorded elsewhere" in shown.output
