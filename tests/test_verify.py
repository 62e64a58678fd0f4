"""``mla-tune verify``: paired re-measurement of a table's or a profile's tuned settings, with the replay runner."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from mla_tune.cli import app

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "results/h100/tables/FLASH_ATTN_MLA-deepseek-v3-tp1.yaml"
REPLAY = f"replay:{ROOT / 'results/sweeps/h100'}"


def run(*args: str):
    return CliRunner().invoke(app, ["verify", *args, "--runner", REPLAY, "--rounds", "4"])


def test_a_table_whose_gains_hold_exits_zero_and_says_replay():
    r = run(str(TABLE))
    assert r.exit_code == 0, r.output
    rows = [x for x in r.output.splitlines() if x.startswith("  ")]
    assert len(rows) == 5  # the five tuned entries of the H100 table
    assert all("replay" in x for x in rows) and "runner replay" in r.output
    assert any(x.split()[0] == "64q4s4k" and "HOLDS" in x for x in rows)


def test_an_entry_slower_than_the_default_fails_the_check(tmp_path):
    table = yaml.safe_load(TABLE.read_text())
    entry = next(e for e in table["entries"] if e["shape"] == "q1s4k")
    entry.update(tuned=True, params=dict(entry["default_params"], max_num_splits=1), speedup=1.2)
    table["entries"] = [entry]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(table))
    r = run(str(path))
    assert r.exit_code == 1, r.output
    assert "SLOWER" in r.output and "1 slower" in r.output and "(recorded x1.200)" in r.output


def test_a_profile_is_verified_point_by_point(tmp_path):
    profile = tmp_path / "p.yaml"
    r = CliRunner().invoke(app, ["deploy", str(TABLE), "--workload", "decode_4k", "--vllm", "0.20.0",
                                 "-o", str(profile)])
    assert r.exit_code == 0, r.output
    r = run(str(profile))
    assert r.exit_code == 0, r.output
    rows = [x for x in r.output.splitlines() if x.startswith("  ")]
    # decode_4k on this table: only the 256-token point changes vLLM's cap, measured at three shapes
    assert sorted(x.split()[0] for x in rows) == ["256q1s4k", "32q8s4k", "64q4s4k"]
    assert any(x.startswith("profile ") for x in r.output.splitlines())


def test_bad_rounds_and_a_file_that_is_neither_are_one_line_errors(tmp_path):
    r = CliRunner().invoke(app, ["verify", str(TABLE), "--runner", REPLAY, "--rounds", "1"])
    assert r.exit_code == 2 and "at least 2" in r.output
    bad = tmp_path / "x.yaml"
    bad.write_text("schema_version: 1\nkind: something\n")
    r = CliRunner().invoke(app, ["verify", str(bad), "--runner", REPLAY])
    assert r.exit_code == 2 and str(bad) in r.output and len(r.output.strip().splitlines()) == 1


def test_profile_items_run_the_profiles_global_values_too():
    from mla_tune.serving.profile import Match, PerBatchRule, Point, Profile
    from mla_tune.serving.verify import profile_items

    match = Match("H100", "9.0", "FLASH_ATTN_MLA", 128, 512, 64, "auto", "0.20")
    rule = PerBatchRule("max_num_splits", (Point(256, 1, None, "256q1s4k"),))
    [graphed] = profile_items(Profile(match, (rule,)))
    assert graphed.tuned["max_num_splits"] == 1 and graphed.tuned["cuda_graphs"] is True
    [eager] = profile_items(Profile(match, (rule,), global_=(("cuda_graphs", False),)))
    # without graphs vLLM never reads the cap: the deployment runs eager with the cap idle at vLLM's 32
    assert eager.tuned["cuda_graphs"] is False and eager.tuned["max_num_splits"] == 32


@pytest.mark.parametrize("args, words", [
    (["--rounds", "1000000000000"], "--rounds 1000000000000 is out of range: 2 to 200"),
    (["--rounds", "201", "--max-rounds", "300"], "--rounds 201 is out of range: 2 to 200"),
    (["--rounds", "1"], "--rounds 1: need at least 2 paired rounds"),
    (["--rounds", "30"], "--rounds 30 is above --max-rounds 24 (raise --max-rounds (at most 200) or lower --rounds)"),
    (["--rounds", "4", "--max-rounds", "1000000000000"], "--max-rounds 1000000000000 is out of range: 2 to 200"),
    (["--rounds", "4", "--max-rounds", "1"], "--max-rounds 1 is out of range: 2 to 200"),
])
def test_verify_rounds_are_bounded_in_one_line_before_anything_runs(args, words, monkeypatch):
    """`verify --rounds 1000000000000` would have run unbounded: the rounds are device time."""
    from mla_tune.runners import replay

    def no_runner(*a, **kw):
        raise AssertionError("a runner was opened")

    monkeypatch.setattr(replay.ReplayRunner, "open", no_runner)
    r = CliRunner().invoke(app, ["verify", str(TABLE), "--runner", REPLAY, *args])
    assert r.exit_code == 2 and r.output.startswith(f"mla-tune: error: {words}") and r.output.count("\n") == 1, \
        r.output
