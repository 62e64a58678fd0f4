"""bench-serve on CPU: its plan, its dry run, and every path of a run against a test double of the ``vllm``
executable (``fake_vllm.py``: a /health server and a client writing vLLM-shaped results). The GPU run itself is
evidence under results/, never a test."""

from __future__ import annotations

import json
import math
import os
import socket
import stat
import statistics
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mla_tune.cli import app
from mla_tune.errors import UsageError
from mla_tune.prove.bench import _completed as bench_completed
from mla_tune.prove.plan import (BenchPlan, Load, Start, Variant, loads_from, loads_from_traffic, make_plan,
                                 split_server_args)
from mla_tune.prove.summary import METRICS, Ratio, RunResult, summarize
from mla_tune.stats import paired_speedup, t_quantile
from mla_tune.views.render_prove import summary_lines
from mla_tune.traffic_io import Traffic

ROOT = Path(__file__).resolve().parent.parent
PROFILE = ROOT / "results" / "h200" / "profile-FLASH_ATTN_MLA.yaml"
TRITON_PROFILE = ROOT / "results" / "h200" / "profile-TRITON_MLA.yaml"
FAKE = Path(__file__).parent / "fake_vllm.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def vllm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An executable ``vllm`` that runs the test double; its counters and pids in tmp_path/fake."""
    exe = tmp_path / "bin" / "vllm"
    exe.parent.mkdir()
    exe.write_text(f"#!/bin/sh\nexec {sys.executable} {FAKE} \"$@\"\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    (tmp_path / "fake").mkdir()
    monkeypatch.setenv("FAKE_VLLM_DIR", str(tmp_path / "fake"))
    monkeypatch.delenv("MLA_TUNE_PROFILE", raising=False)
    return exe


@pytest.fixture
def model(tmp_path: Path) -> Path:
    d = tmp_path / "model"
    d.mkdir()
    (d / "tokenizer.json").write_text("{}")
    return d


def bench(vllm: Path, model: Path, out: Path, *extra: str, port: int | None = None, profile: Path = PROFILE):
    args = ["bench-serve", str(profile), "--model", str(model), "-o", str(out), "--vllm-bin", str(vllm),
            "--port", str(port or free_port()), "--concurrency", "8,64", "--repeats", "2", "--waves", "1",
            "--server-timeout", "30", "--client-timeout", "30", *extra, "--", "--load-format", "dummy"]
    return CliRunner().invoke(app, args)


def counter(tmp_path: Path, what: str) -> int:
    path = tmp_path / "fake" / what
    return int(path.read_text()) if path.exists() else 0


def leftovers(out: Path) -> list[str]:
    return [p.name for p in out.rglob(".*") if p.name.startswith((".run-", ".summary", ".plan"))]


# -- a whole run ---------------------------------------------------------------------------------------------------
def test_a_run_crosses_the_variants_over_and_claims_only_what_the_intervals_show(tmp_path, vllm, model, monkeypatch):
    monkeypatch.setenv("VLLM_LOGGING_LEVEL", "WARNING")  # the servers log at INFO anyway: the plugin's proof is there
    out = tmp_path / "out"
    r = bench(vllm, model, out, "--repeats", "3")  # the last --repeats wins
    assert r.exit_code == 0, r.output
    assert counter(tmp_path, "serve") == 9 and counter(tmp_path, "bench") == 18  # 3 variants x 3 repeats x 2 loads
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert len(runs) == 18 and "r1-default-c8-in2000-out500.json" in runs
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] is True and summary["dummy_weights"] is True
    assert summary["environment"]["vllm"] == "0.20.0"  # vLLM's own --version
    assert [r["variant"] for r in summary["runs"] if r["load"] == "c8-in2000-out500"] == \
        ["default", "profile", "flags", "flags", "profile", "default", "default", "profile", "flags"]  # ABC CBA ABC
    small, large = summary["loads"]
    assert large["ratios"]["profile"]["mean_tpot_ms"]["verdict"] == "better"  # the double gives 5% at 64
    assert large["ratios"]["profile"]["output_throughput"]["ratio"] == pytest.approx(1.05, abs=0.01)
    assert small["ratios"]["profile"]["mean_tpot_ms"]["verdict"] == "same within noise"
    assert small["ratios"]["flags"]["mean_tpot_ms"]["verdict"] == "worse"  # cap 1 everywhere costs the small batch
    text = (out / "summary.txt").read_text()
    assert "concurrency 64" in text and "WORSE" in text and "dummy weights" in text
    assert (out / "ratios.png").read_bytes()[:4] == b"\x89PNG"
    assert "starting MLA_TUNE_PROFILE=" in r.output and "server up in" in r.output  # progress says what runs
    assert "mla-tune: profile" in (out / "logs" / "r1-profile.server.log").read_text()
    assert leftovers(out) == []


def test_the_same_command_resumes_only_what_is_missing(tmp_path, vllm, model):
    out = tmp_path / "out"
    assert bench(vllm, model, out).exit_code == 0
    cut = out / "runs" / "r2-profile-c64-in2000-out500.json"
    earlier = out / "runs" / "r2-profile-c8-in2000-out500.json"
    before = earlier.read_bytes()
    cut.unlink()  # as if stopped during the start's last load
    r = bench(vllm, model, out)  # on another free port: the port is no part of what is measured
    assert r.exit_code == 0, r.output
    # the start cut short runs again whole, on one server: its first load too, so that no run of it is the first
    # on its server where the same run of every other start was not
    assert counter(tmp_path, "serve") == 7 and counter(tmp_path, "bench") == 14
    assert "every load done earlier, kept" in r.output and "set aside in superseded/" in r.output
    assert (out / "superseded" / earlier.name).read_bytes() == before  # kept, not lost
    assert cut.exists() and earlier.exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] is True and not any("superseded" in run["result"] for run in summary["runs"])


def test_the_summary_counts_only_whole_starts(tmp_path, vllm, model):
    out = tmp_path / "out"
    assert bench(vllm, model, out).exit_code == 0
    (out / "runs" / "r2-profile-c64-in2000-out500.json").unlink()
    plan = make_plan(PROFILE, str(model), ["--load-format", "dummy"], concurrency=(8, 64), waves=1, repeats=2)
    runs = bench_completed(plan, out)
    assert not [x for x in runs if x.start.label == "r2-profile"]  # its c8 run alone is not compared
    assert {x.start.label for x in runs} == {s.label for s in plan.starts()} - {"r2-profile"}
    assert len(runs) == 2 * (len(plan.starts()) - 1)


def test_a_folder_of_another_plan_is_refused(tmp_path, vllm, model):
    out, port = tmp_path / "out", free_port()
    (out / "runs").mkdir(parents=True)
    (out / "plan.json").write_text(json.dumps({"kind": "something else"}))
    r = bench(vllm, model, out, port=port)
    assert r.exit_code == 2 and "holds another bench-serve plan" in r.output and counter(tmp_path, "serve") == 0


# -- what goes wrong: one line, a non-zero exit, nothing half-written ----------------------------------------------
def test_a_server_that_does_not_come_up(tmp_path, vllm, model, monkeypatch):
    monkeypatch.setenv("FAKE_VLLM_SERVE", "fail")
    out = tmp_path / "out"
    r = bench(vllm, model, out)
    assert r.exit_code == 1
    [line] = [ln for ln in r.output.splitlines() if ln.startswith("mla-tune: error:")]
    assert "vllm serve exited with status 1 before it was up" in line and "CUDA out of memory" in line
    assert list((out / "runs").iterdir()) == [] and leftovers(out) == []
    assert json.loads((out / "summary.json").read_text())["complete"] is False


def test_a_server_that_hangs_is_stopped(tmp_path, vllm, model, monkeypatch):
    monkeypatch.setenv("FAKE_VLLM_SERVE", "hang")
    r = bench(vllm, model, tmp_path / "out", "--server-timeout", "1.5")
    assert r.exit_code == 1 and "was not up after 1.5 s" in r.output
    [pid] = (tmp_path / "fake" / "pids").read_text().split()
    with pytest.raises(ProcessLookupError):  # the whole process group was killed
        os.kill(int(pid), 0)


def test_a_failing_client_keeps_the_runs_that_completed(tmp_path, vllm, model, monkeypatch):
    monkeypatch.setenv("FAKE_VLLM_BENCH_FAIL_AT", "3")
    out = tmp_path / "out"
    r = bench(vllm, model, out)
    assert r.exit_code == 1
    assert "vllm bench serve failed with status 2: ValueError: the client failed (fake)" in r.output
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["r1-default-c64-in2000-out500.json",
                                                                 "r1-default-c8-in2000-out500.json"]
    assert leftovers(out) == [] and (out / "logs" / "r1-profile-c8-in2000-out500.client.log").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] is False and len(summary["runs"]) == 2


@pytest.mark.parametrize(("mode", "words"), [("partial", "1 failed: the run does not measure the load"),
                                             ("no-result", "wrote no readable result")])
def test_a_client_run_that_did_not_measure_the_load_is_not_kept(tmp_path, vllm, model, monkeypatch, mode, words):
    monkeypatch.setenv("FAKE_VLLM_BENCH", mode)
    out = tmp_path / "out"
    r = bench(vllm, model, out)
    assert r.exit_code == 1 and words in r.output
    assert list((out / "runs").iterdir()) == [] and leftovers(out) == []


def test_a_taken_port_is_refused_before_anything_starts(tmp_path, vllm, model):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        r = bench(vllm, model, tmp_path / "out", port=s.getsockname()[1])
    assert r.exit_code == 2 and "is taken (another server?)" in r.output and counter(tmp_path, "serve") == 0


@pytest.mark.parametrize(("mode", "words"), [
    ("not-applied", "not applied: it was measured for another engine"),
    ("no-plugin", "mla-tune's plugin did not load in the server"),
    ("disabled-later", "disabled at decode"),
])
def test_a_profile_the_plugin_did_not_apply_is_never_reported(tmp_path, vllm, model, monkeypatch, mode, words):
    monkeypatch.setenv("FAKE_VLLM_SERVE", mode)
    out = tmp_path / "out"
    r = bench(vllm, model, out)
    assert r.exit_code == 1 and words in r.output and "so none is reported" in r.output
    assert not [p for p in (out / "runs").iterdir() if "-profile-" in p.name]


def test_a_model_folder_without_a_tokenizer_is_refused(tmp_path, vllm):
    (tmp_path / "bare").mkdir()
    r = bench(vllm, tmp_path / "bare", tmp_path / "out")
    assert r.exit_code == 2 and "has no tokenizer" in r.output and counter(tmp_path, "serve") == 0


def test_a_missing_vllm_is_one_line(tmp_path, model):
    r = bench(tmp_path / "nowhere" / "vllm", model, tmp_path / "out")
    assert r.exit_code == 2 and "not found" in r.output and "Traceback" not in r.output


# -- the dry run and the plan --------------------------------------------------------------------------------------
def test_the_dry_run_prints_every_command_and_starts_nothing(tmp_path, vllm, model):
    r = CliRunner().invoke(app, ["bench-serve", str(PROFILE), "--model", str(model), "--dry-run", "--vllm-bin",
                                 str(vllm), "--concurrency", "8,256", "--", "--load-format", "dummy",
                                 "--attention-config", '{"flash_attn_version": 3}'])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    servers = [ln for ln in lines if " serve " in ln and "bench" not in ln]
    assert len(servers) == 12 and counter(tmp_path, "serve") == 0  # 3 variants x 4 repeats, nothing started
    assert sum("MLA_TUNE_PROFILE=" in ln for ln in servers) == 4
    assert all('"backend": "FLASH_ATTN_MLA"' in ln and '"flash_attn_version": 3' in ln for ln in servers)
    assert sum('"flash_attn_max_num_splits_for_cuda_graph": 1' in ln for ln in servers) == 4
    clients = [ln for ln in lines if "bench serve" in ln]
    assert len(clients) == 24 and all("--ignore-eos" in ln for ln in clients)
    assert any("--max-concurrency 256" in ln and "--num-prompts 1024" in ln for ln in clients)
    assert "# [9/12] r3-flags" in lines and "# [12/12] r4-default" in lines  # ABC CBA ABC CBA


def test_the_flags_variant_needs_a_value_vllm_has_a_flag_for():
    r = CliRunner().invoke(app, ["bench-serve", str(TRITON_PROFILE), "--model", "some/model", "--dry-run"])
    assert r.exit_code == 2 and "sets nothing vLLM has a flag for" in r.output and "drop --variant flags" in r.output
    r = CliRunner().invoke(app, ["bench-serve", str(TRITON_PROFILE), "--model", "some/model", "--dry-run",
                                 "--variant", "profile"])
    assert r.exit_code == 0 and "# variant flags" not in r.output


@pytest.mark.parametrize(("args", "words"), [
    (["--port", "9000"], "--port is not a server argument here"),
    (["--attention-config", "{backend: x"], "is not JSON"),
    (["--attention-config", '{"backend": "TRITON_MLA"}'], "every variant runs the profile's backend"),
    (["--attention-config"], "needs a JSON value"),
])
def test_server_arguments_that_would_break_the_comparison(args, words):
    with pytest.raises(UsageError, match=words):
        split_server_args(args, "FLASH_ATTN_MLA")


def test_server_arguments_keep_their_order_and_merge_the_configs():
    rest, attention, compilation = split_server_args(
        ["--max-model-len", "4096", "--compilation-config={\"cudagraph_mode\": \"FULL_DECODE_ONLY\"}",
         "--attention-config", '{"flash_attn_version": 3}', "--trust-remote-code"], "FLASH_ATTN_MLA")
    assert rest == ("--max-model-len", "4096", "--trust-remote-code")
    assert attention == {"flash_attn_version": 3, "backend": "FLASH_ATTN_MLA"}
    assert compilation == {"cudagraph_mode": "FULL_DECODE_ONLY"}


@pytest.mark.parametrize(("args", "words"), [
    (["--repeats", "1"], "--repeats 1 is out of range"),
    (["--concurrency", "8,x"], "expected integers"),
    (["--concurrency", "0"], "--concurrency 0 is out of range"),
    (["--variant", "default"], "nothing to compare"),
    (["--variant", "default,fast"], "unknown variant 'fast'"),
    (["--input-len", "0"], "--input-len 0 is out of range"),
    (["--port", "80"], "--port 80 is out of range"),
])
def test_bad_arguments_are_one_line_with_exit_2(model, args, words):
    r = CliRunner().invoke(app, ["bench-serve", str(PROFILE), "--model", str(model), "--dry-run", *args])
    assert r.exit_code == 2 and words in r.output, r.output


def test_without_an_output_folder_only_a_dry_run_is_possible(model):
    r = CliRunner().invoke(app, ["bench-serve", str(PROFILE), "--model", str(model)])
    assert r.exit_code == 2 and "needs -o DIR" in r.output


def test_a_traffic_file_becomes_the_loads(tmp_path):
    traffic = Traffic((("8q1s1k", 10.0), ("256q1s4k", 1.0), ("2q1s4k_2q1s4k", 1.0), ("q4k", 3.0)), "t.csv")
    loads, notes = loads_from_traffic(traffic, 500, 4)
    # input = context less half the output, so that decode contexts average the shape's
    assert [(x.concurrency, x.input_len, x.num_prompts) for x in loads] == [(4, 3846, 32), (8, 774, 32),
                                                                            (256, 3846, 1024)]
    assert loads[0].shapes == ("2q1s4k_2q1s4k",)
    assert notes[0] == "q4k: no decode request (a prefill-only batch), left out" and "less half" in notes[-1]
    path = tmp_path / "t.csv"
    path.write_text("spec,weight\n8q1s1k,10\n64q1s2k,1\n")
    r = CliRunner().invoke(app, ["bench-serve", str(PROFILE), "--model", "m/m", "--dry-run", "--traffic", str(path),
                                 "--variant", "profile"])
    assert r.exit_code == 0, r.output
    assert "--max-concurrency 64" in r.output and "--random-input-len 1798" in r.output
    r = CliRunner().invoke(app, ["bench-serve", str(PROFILE), "--model", "m/m", "--dry-run", "--traffic", str(path),
                                 "--concurrency", "8"])
    assert r.exit_code == 2 and "drop --input-len and --concurrency" in r.output


# -- the summary's statistics --------------------------------------------------------------------------------------
def _plan(repeats: int, variants: tuple[str, ...] = ("default", "profile")) -> BenchPlan:
    """A plan of one load, for the summary's statistics (nothing is started)."""
    return BenchPlan(PROFILE, "FLASH_ATTN_MLA", "m", "m", (), (), (), tuple(Variant(v, "") for v in variants),
                     loads_from([8], 100, 10, 1), repeats, 8000, "vllm")


def _runs(plan: BenchPlan, tpots: dict[str, list[float]]) -> list[RunResult]:
    out = []
    for s in plan.starts():
        t = tpots[s.variant.name][s.repeat]
        values = {m.key: (1000 / t if m.higher_is_better else t) for m in METRICS}
        out.append(RunResult(s, plan.loads[0], values, "x.json"))
    return out


def test_ratios_pair_each_repeat_with_its_default_and_read_above_1_as_better():
    plan = _plan(3)
    s = summarize(plan, _runs(plan, {"default": [10.0, 10.2, 9.9], "profile": [9.5, 9.7, 9.4]}), {})
    tpot, tput = (s.ratio("profile", plan.loads[0], k) for k in ("mean_tpot_ms", "output_throughput"))
    assert tpot.ratio == pytest.approx(tput.ratio) and tpot.ratio > 1.04 and tpot.verdict == "better"
    noisy = summarize(plan, _runs(plan, {"default": [10.0, 10.0, 10.0], "profile": [9.0, 11.0, 10.0]}), {})
    assert noisy.ratio("profile", plan.loads[0], "mean_tpot_ms").verdict == "same within noise"
    assert s.complete and not summarize(plan, _runs(plan, {"default": [1.0] * 3, "profile": [1.0] * 3})[:-1],
                                        {}).complete


def test_a_repeat_without_its_default_is_not_paired():
    plan = _plan(2)
    runs = [r for r in _runs(plan, {"default": [10.0, 10.0], "profile": [9.0, 9.0]})
            if not (r.start.repeat == 1 and r.start.variant.name == "default")]
    r = summarize(plan, runs, {}).ratio("profile", plan.loads[0], "mean_tpot_ms")
    assert r.repeats == 1 and r.verdict == "one repeat: no interval"


def test_load_and_start_labels():
    assert Load(8, 2000, 500, 32).label == "c8-in2000-out500"
    assert Start(0, 1, Variant("flags", "")).label == "r2-flags"


# -- how many repeats would decide an undecided ratio ------------------------------------------------------------
def _ratio(logs: list[float], level: float = 1 - 0.05 / 12) -> Ratio:
    """The Ratio summarize() makes of repeats whose log ratios are ``logs``."""
    ps = paired_speedup([math.exp(x) for x in logs], [1.0] * len(logs), level)
    return Ratio("profile", Load(256, 2000, 128, 256), METRICS[2], ps.speedup, ps.ci_low, ps.ci_high, ps.rounds, level)


def test_an_undecided_gain_says_how_many_repeats_would_decide_it():
    # the H100's profile at concurrency 256, median ITL: x1.046, x1.055, x1.035 over 3 repeats
    r = _ratio([math.log(17.05 / 16.30), math.log(16.91 / 16.03), math.log(16.83 / 16.26)])
    assert r.verdict == "same within noise" and r.repeats_to_decide() == 4
    # the answer is the first n whose interval, at this mean and spread, clears 1 (checked by a plain scan)
    logs = [0.02, 0.05, -0.01, 0.04]
    r = _ratio(logs)
    sd, mean, q = statistics.stdev(logs), statistics.fmean(logs), 1 - (1 - r.level) / 2
    first = next(n for n in range(5, 101) if t_quantile(q, n - 1) * sd / math.sqrt(n) < mean)
    assert r.repeats_to_decide() == first


def test_no_repeats_are_suggested_where_nothing_is_worth_deciding():
    assert _ratio([0.05, 0.051, 0.049]).repeats_to_decide() is None  # decided already (better)
    assert _ratio([0.004, 0.006, -0.002]).repeats_to_decide() is None  # within 1% of 1: negligible
    assert _ratio([0.5, -0.45, 0.03]).repeats_to_decide() is None  # would need more than 100 repeats
    assert _ratio([math.log(1.02)]).repeats_to_decide() is None  # one repeat: no spread to go on


# -- runs far off their variant's other repeats are listed ------------------------------------------------------
def test_a_run_far_off_its_variants_other_repeats_is_listed_as_suspect():
    plan = _plan(3, ("default", "profile", "flags"))
    # the H100's concurrency-256 throughput: two runs ran first on a resumed server, cold
    tput = {"default": [2210.0, 2211.0, 1753.0], "profile": [2228.0, 2223.0, 2223.0], "flags": [1757.0, 2228.0, 2233.0]}
    runs = [RunResult(s, plan.loads[0], {m.key: tput[s.variant.name][s.repeat] if m.higher_is_better else 10.0
                                         for m in METRICS}, f"{s.label}.json") for s in plan.starts()]
    summary = summarize(plan, runs, {"gpu": "g", "vllm": "0.20.0"})
    found = {(x.run.start.label, x.metric.key): round(x.off, 2) for x in summary.suspects()}
    assert found == {("r3-default", "output_throughput"): -0.21, ("r1-flags", "output_throughput"): -0.21}
    text = "\n".join(summary_lines(summary))
    assert "suspect runs" in text and "r3-default c8-in100-out10: output throughput 1753 tok/s, -21% against the median 2210" in text
    assert [x["result"] for x in summary.to_dict()["suspect_runs"]] == ["r1-flags.json", "r3-default.json"]


def test_runs_within_the_spread_and_two_repeats_list_no_suspect():
    plan = _plan(3)
    steady = summarize(plan, _runs(plan, {"default": [10.0, 10.5, 9.6], "profile": [9.0, 9.4, 8.8]}), {})
    assert steady.suspects() == [] and "suspect" not in "\n".join(summary_lines(steady))
    two = _plan(2)  # which of two repeats is off cannot be told
    assert summarize(two, _runs(two, {"default": [10.0, 20.0], "profile": [9.0, 9.0]}), {}).suspects() == []


# -- the profile against the global flag, directly ---------------------------------------------------------------
def test_the_profile_is_judged_against_the_flags_variant_directly():
    plan = _plan(3, ("default", "profile", "flags"))
    # the H100's median ITL at concurrency 8 (ms): the flag costs 4.6%, the profile runs the default's split cap
    itl = {"default": [9.374, 9.38, 9.376], "profile": [9.363, 9.37, 9.376], "flags": [9.82, 9.828, 9.826]}
    summary = summarize(plan, _runs(plan, itl), {})
    direct = summary.ratio("profile", plan.loads[0], "median_itl_ms", "flags")
    assert direct is not None and direct.label == "profile vs flags" and direct.verdict == "better"
    assert direct.ratio == pytest.approx(9.825 / 9.370, rel=1e-3)
    assert direct.level == summary.ratio("profile", plan.loads[0], "median_itl_ms").level == 1 - 0.05 / 3
    load = summary.to_dict()["loads"][0]
    assert load["profile_vs_flags"]["median_itl_ms"]["verdict"] == "better"
    assert set(load["ratios"]) == {"profile", "flags"}  # against the default, as before
    assert "profile vs flags" in "\n".join(summary_lines(summary))


def test_no_direct_comparison_without_both_variants():
    plan = _plan(3)  # default and profile only
    summary = summarize(plan, _runs(plan, {"default": [10.0, 10.1, 9.9], "profile": [9.0, 9.1, 8.9]}), {})
    assert all(r.baseline == "default" for r in summary.ratios)
    assert "profile_vs_flags" not in summary.to_dict()["loads"][0]
    assert "profile vs flags" not in "\n".join(summary_lines(summary))
