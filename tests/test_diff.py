"""diff: two tables paired by shape (the committed H100 and H200 tables), rendered, and bad input refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from mla_tune.cli import app
from mla_tune.tables.diff import Disagreement, diff_tables
from mla_tune.tables.landscape import Verdict, freeze
from mla_tune.tables.landscape_io import read_table

ROOT = Path(__file__).resolve().parent.parent
H100 = ROOT / "results/h100/tables/FLASH_ATTN_MLA-deepseek-v3-tp1.yaml"
H200 = ROOT / "results/h200/run1/tables/FLASH_ATTN_MLA-deepseek-v3-tp1.yaml"
cli = CliRunner()


@pytest.fixture(autouse=True)
def wide(monkeypatch):
    monkeypatch.setenv("COLUMNS", "240")  # rich wraps tables to the terminal width


def test_h100_and_h200_tables_pair_by_shape():
    d = diff_tables(read_table(H100), read_table(H200))
    rows = {r.label: r for r in d.rows}
    assert len(rows) == 17 and d.count("only A") == 11 and d.count("only B") == 0
    # tuned on the H200 only: max_num_splits 1 instead of vLLM's 32
    assert rows["64q1s4k"].status == "differ"
    assert rows["64q1s4k"].disagreements == (Disagreement("max_num_splits", 32, 1),)
    assert not rows["64q1s4k"].a.tuned and rows["64q1s4k"].b.tuned
    assert rows["64q1s4k"].b.confirmed.low == 1.05
    # tuned alike on both
    assert rows["256q1s4k"].status == "same"
    assert rows["256q1s4k"].latency_ratio == pytest.approx(0.5043 / 0.5113, rel=1e-3)
    assert rows["q4k"].status == "only A" and rows["q4k"].b is None and rows["q4k"].latency_ratio is None
    assert [h.knob for h in d.header] == ["gpu"]


def test_a_table_against_itself_is_the_same_everywhere():
    d = diff_tables(read_table(H200), read_table(H200))
    assert {r.status for r in d.rows} == {"same"} and d.header == ()


def _verdict(*configs: dict, tuned: bool = True) -> Verdict:
    params = tuple(freeze(c) for c in configs)
    return Verdict(tuned, params, params, 1.0, 1.0, None, None, "", None)


def test_mix_entries_compare_config_by_config():
    a = _verdict({"num_kv_splits": 2}, {"num_kv_splits": 4})
    b = _verdict({"num_kv_splits": 2}, {"num_kv_splits": 8})
    from mla_tune.tables.diff import _disagreements

    assert _disagreements(a, b) == (Disagreement("[1].num_kv_splits", 4, 8),)


def test_cli_diff_reads_well(tmp_path):
    r = cli.invoke(app, ["diff", str(H100), str(H200)])
    assert r.exit_code == 0, r.output
    out = r.output
    assert "NVIDIA H100 80GB HBM3" in out and "NVIDIA H200" in out and "runner vllm" in out
    assert "max_num_splits 32→1" in out and "x1.055 [1.050, 1.060]" in out and "only A (H100)" in out
    assert "6 shapes in both tables (2 differ, 4 the same); 11 only in A, 0 only in B" in out
    assert "replay" not in out


def _replayed(tmp_path: Path) -> Path:
    data = yaml.safe_load(H200.read_text())
    data["provenance"]["runner"] = "replay"
    path = tmp_path / "replayed.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_replayed_numbers_say_replay(tmp_path):
    r = cli.invoke(app, ["diff", str(_replayed(tmp_path)), str(H200)])
    assert r.exit_code == 0, r.output
    assert "runner replay" in r.output and "A ms (replay)" in r.output and "A speedup (replay)" in r.output
    assert "B ms (replay)" not in r.output and "runner replay vs vllm" in r.output


@pytest.mark.parametrize("content", ["kind: something-else\n", "- a list\n", "entries: [\n"])
def test_bad_tables_are_one_line_and_exit_2(tmp_path, content):
    bad = tmp_path / "bad.yaml"
    bad.write_text(content)
    r = cli.invoke(app, ["diff", str(H200), str(bad)])
    assert r.exit_code == 2
    [line] = [x for x in r.output.splitlines() if x.strip()]
    assert line.startswith("mla-tune: error:") and "bad.yaml" in line


def test_a_missing_table_is_one_line(tmp_path):
    r = cli.invoke(app, ["diff", str(H200), str(tmp_path / "nope.yaml")])
    assert r.exit_code == 2
    assert len([x for x in r.output.splitlines() if x.strip()]) == 1 and "nope.yaml" in r.output
