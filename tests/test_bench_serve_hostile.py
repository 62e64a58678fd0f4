"""A hostile pass over ``mla-tune bench-serve`` (a review of the feature, CPU only, against the test doubles).

Each ``BUG-n`` section was a bug the review found, now its regression test: a refused run kept, a server outliving
SIGTERM or its stop, an unusable --vllm-bin, resumes mixing profiles, environments or stale files, a proxy in the
way, server arguments escaping the merge, the caller's environment reaching vLLM's default, the GPU named, traffic
shapes the client cannot serve, and claims without multiplicity control.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mla_tune.cli import app
from mla_tune.errors import UsageError
from mla_tune.prove import bench as bench_mod
from mla_tune.prove.plan import BenchPlan, Variant, loads_from, loads_from_traffic, make_plan, split_server_args
from mla_tune.prove.processes import gpu_name, server
from mla_tune.prove.summary import METRICS, RunResult, summarize
from tests.test_bench_serve import PROFILE, _plan, bench, counter, free_port, leftovers, model, vllm  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
HOSTILE = Path(__file__).parent / "fake_vllm_hostile.py"


@pytest.fixture
def hostile(vllm: Path) -> Path:  # noqa: F811 - the fixture of test_bench_serve
    """The ``vllm`` executable of test_bench_serve, running the hostile wrapper of the double instead."""
    vllm.write_text(f"#!/bin/sh\nexec {sys.executable} {HOSTILE} \"$@\"\n")
    return vllm


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in state


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _kill_children(tmp_path: Path) -> None:
    path = tmp_path / "fake" / "child_pids"
    for pid in (path.read_text().split() if path.exists() else []):
        _kill(int(pid))


def _profile_copy(tmp_path: Path, replace: tuple[str, str] | None = None) -> Path:
    text = PROFILE.read_text()
    if replace:
        assert replace[0] in text
        text = text.replace(*replace)
    path = tmp_path / "profile.yaml"
    path.write_text(text)
    return path


SMALL = ("--concurrency", "64", "--variant", "profile")  # 2 variants x 2 repeats x 1 load: 4 starts, 4 runs


# -- BUG-1: a run whose server the plugin check then refuses is already kept ------------------------------------------
def test_a_profile_disabled_during_the_run_leaves_no_profile_run(tmp_path, hostile, model, monkeypatch):
    monkeypatch.setenv("FAKE_HOSTILE_SERVE", "disable-profile-later")
    out = tmp_path / "out"
    r = bench(hostile, model, out, *SMALL)
    assert r.exit_code == 1 and "disabled at decode" in r.output and "so none is reported" in r.output
    # the run the refusal is about must not be kept (nor counted as done by a resume, nor in summary.json)
    assert [p.name for p in (out / "runs").iterdir() if "-profile-" in p.name] == []


# -- BUG-2: SIGTERM to mla-tune leaves the server running --------------------------------------------------------------
def test_sigterm_to_bench_serve_stops_its_server(tmp_path, hostile, model):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "FAKE_VLLM_DIR": str(tmp_path / "fake"),
           "FAKE_HOSTILE_BENCH_SLEEP": "30"}
    env.pop("MLA_TUNE_PROFILE", None)
    port = free_port()
    cmd = [sys.executable, "-c", "from mla_tune.cli import main; main()", "bench-serve", str(PROFILE), "--model",
           str(model), "-o", str(tmp_path / "out"), "--vllm-bin", str(hostile), "--port", str(port), *SMALL,
           "--repeats", "2", "--waves", "1", "--", "--load-format", "dummy"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started = tmp_path / "fake" / "client_started"
    pids = tmp_path / "fake" / "pids"
    server_pid = client_pid = None
    try:
        deadline = time.monotonic() + 30
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert started.exists(), "the client never started"
        time.sleep(0.1)
        client_pid = int(started.read_text())
        [server_pid] = map(int, pids.read_text().split())
        proc.send_signal(signal.SIGTERM)  # what `timeout`, a job scheduler or `kill` sends
        proc.wait(timeout=30)
        time.sleep(0.5)
        assert not _alive(server_pid), "vllm serve still runs after bench-serve was terminated"
    finally:
        if proc.poll() is None:
            proc.kill()
        if server_pid:  # the server leads its own process group
            try:
                os.killpg(server_pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if client_pid:
            _kill(client_pid)


# -- BUG-3: engine processes that ignore SIGTERM outlive Server.stop ---------------------------------------------------
@pytest.mark.parametrize("mode", ["stubborn-child", "crash-leaving-child"])
def test_no_process_of_a_server_outlives_it(tmp_path, hostile, monkeypatch, mode):
    monkeypatch.setenv("FAKE_HOSTILE_SERVE", mode)
    port = free_port()
    log = tmp_path / "server.log"
    try:
        try:
            with server([str(hostile), "serve", "m", "--port", str(port)], dict(os.environ), log, port, 20,
                        poll_s=0.1):
                pass
        except Exception:  # crash-leaving-child: "exited with status 1 before it was up"
            assert mode == "crash-leaving-child"
        time.sleep(0.3)
        [child] = map(int, (tmp_path / "fake" / "child_pids").read_text().split())
        assert not _alive(child), "a process of the server's group outlived its stop (it holds GPU memory)"
    finally:
        _kill_children(tmp_path)


# -- BUG-4: an unusable --vllm-bin -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["not-executable", "directory"])
def test_an_unusable_vllm_bin_is_a_usage_error_with_its_hint(tmp_path, model, kind):  # noqa: F811
    exe = tmp_path / "vllm"
    if kind == "directory":
        exe.mkdir()
    else:
        exe.write_text("#!/bin/sh\n")
        exe.chmod(exe.stat().st_mode & ~(stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH))
    r = bench(exe, model, tmp_path / "out")
    assert "Traceback" not in r.output and "mla-tune: error:" in r.output  # this much holds today
    assert r.exit_code == 2 and "--vllm" in r.output, r.output


# -- BUG-5: a resume mixes runs of different profiles / vLLMs ------------------------------------------------------------
def test_a_resume_after_the_profile_changed_is_refused(tmp_path, model):  # noqa: F811
    profile = _profile_copy(tmp_path)
    out = tmp_path / "out"
    bench_mod._claim(out, make_plan(profile, str(model), ["--load-format", "dummy"], variants=["profile"]))
    # redeployed: another split count at 64 (what the plugin applies; the 'profile' variant's command is unchanged)
    _profile_copy(tmp_path, ("tokens: 64\n    value: 1", "tokens: 64\n    value: 16"))
    with pytest.raises(UsageError, match="another bench-serve plan"):
        bench_mod._claim(out, make_plan(profile, str(model), ["--load-format", "dummy"], variants=["profile"]))


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """One complete small run (4 starts), for the resume tests to copy: (folder, model, exe, fake dir)."""
    base = tmp_path_factory.mktemp("done")
    exe = base / "bin" / "vllm"
    exe.parent.mkdir()
    exe.write_text(f"#!/bin/sh\nexec {sys.executable} {HOSTILE} \"$@\"\n")
    exe.chmod(0o755)
    m = base / "model"
    m.mkdir()
    (m / "tokenizer.json").write_text("{}")
    (base / "fake").mkdir()
    out = base / "out"
    env = {"FAKE_VLLM_DIR": str(base / "fake"), "MLA_TUNE_PROFILE": None}
    args = ["bench-serve", str(PROFILE), "--model", str(m), "-o", str(out), "--vllm-bin", str(exe), "--port",
            str(free_port()), *SMALL, "--repeats", "2", "--waves", "1", "--server-timeout", "30", "--client-timeout",
            "30", "--", "--load-format", "dummy"]
    r = CliRunner().invoke(app, args, env=env)
    assert r.exit_code == 0, r.output
    return out, m, exe, args


def _resume(done, tmp_path: Path, **env: str):
    out, m, exe, args = done
    mine = tmp_path / "out"
    shutil.copytree(out, mine)
    (tmp_path / "fake").mkdir(exist_ok=True)
    args = [a if a != str(out) else str(mine) for a in args]
    args[args.index("--port") + 1] = str(free_port())
    return mine, args, {"FAKE_VLLM_DIR": str(tmp_path / "fake"), "MLA_TUNE_PROFILE": None, **env}


def test_a_resume_on_another_vllm_is_refused_or_said(done, tmp_path):
    out, args, env = _resume(done, tmp_path, FAKE_HOSTILE_VERSION="0.21.0")
    (out / "runs" / "r2-profile-c64-in2000-out500.json").unlink()
    r = CliRunner().invoke(app, args, env=env)
    summary = json.loads((out / "summary.json").read_text())
    # either refused, or the summary says its runs come from two vLLMs
    assert r.exit_code == 2 or "0.20.0" in json.dumps(summary["environment"]), (r.exit_code, summary["environment"])


# -- BUG-6: resume and the files it finds ------------------------------------------------------------------------------
def test_an_unreadable_run_file_is_run_again(done, tmp_path):
    out, args, env = _resume(done, tmp_path)
    (out / "runs" / "r2-profile-c64-in2000-out500.json").write_text('{"completed": 2')  # cut short
    r = CliRunner().invoke(app, args, env=env)
    assert r.exit_code == 0, r.output
    assert counter(tmp_path, "serve") == 1 and "INCOMPLETE" not in r.output, r.output


@pytest.mark.parametrize("text", ["null", "[1, 2]", "7", '"result"'])
def test_a_run_file_that_is_json_but_no_result_is_run_again(done, tmp_path, text):
    out, args, env = _resume(done, tmp_path)
    (out / "runs" / "r1-default-c64-in2000-out500.json").write_text(text)
    r = CliRunner().invoke(app, args, env=env)
    assert r.exit_code == 0, (r.output, r.exception)
    assert counter(tmp_path, "serve") == 1 and "not a whole result, run again" in r.output
    assert json.loads((out / "summary.json").read_text())["complete"] is True


def test_a_folder_where_a_run_file_belongs_is_removed_and_run_again(done, tmp_path):
    out, args, env = _resume(done, tmp_path)
    run = out / "runs" / "r1-default-c64-in2000-out500.json"
    run.unlink()
    run.mkdir()
    r = CliRunner().invoke(app, args, env=env)
    assert r.exit_code == 0, (r.output, r.exception)
    assert run.is_file() and counter(tmp_path, "serve") == 1


def test_a_resume_with_nothing_to_run_rewrites_the_summary(done, tmp_path):
    out, args, env = _resume(done, tmp_path)
    stale = json.loads((out / "summary.json").read_text())
    stale["complete"], stale["runs"] = False, stale["runs"][:-1]  # as written before the last run was kept
    (out / "summary.json").write_text(json.dumps(stale))
    r = CliRunner().invoke(app, args, env=env)
    assert r.exit_code == 0 and "INCOMPLETE" not in r.output, r.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] is True and len(summary["runs"]) == 4


def test_a_resume_clears_temporaries_of_a_killed_run(done, tmp_path):
    out, args, env = _resume(done, tmp_path)
    (out / ".run-k1ll3d").mkdir()
    (out / ".run-k1ll3d" / "result.json").write_text("{")
    (out / ".summary.json.x7y8z9").write_text("{")
    r = CliRunner().invoke(app, args, env=env)
    assert r.exit_code == 0, r.output
    assert leftovers(out) == []


def test_a_resume_keeps_the_server_log_of_the_kept_runs(done, tmp_path):
    out, args, env = _resume(done, tmp_path)
    before = (out / "logs" / "r2-profile.server.log").read_text()
    shutil.copy(out / "runs" / "r2-profile-c64-in2000-out500.json", tmp_path / "kept.json")
    (out / "runs" / "r2-profile-c64-in2000-out500.json").unlink()
    r = CliRunner().invoke(app, args, env=env)
    assert r.exit_code == 0, r.output
    assert before in "".join(p.read_text() for p in (out / "logs").glob("r2-profile*.server*"))


def test_the_same_profile_by_another_path_resumes(tmp_path, model, monkeypatch):  # noqa: F811
    out = tmp_path / "out"
    bench_mod._claim(out, make_plan(PROFILE, str(model), [], variants=["profile"]))
    monkeypatch.chdir(PROFILE.parent)
    bench_mod._claim(out, make_plan(Path(PROFILE.name), str(model), [], variants=["profile"]))


# -- BUG-7: the health check goes through an HTTP proxy --------------------------------------------------------------
def test_a_server_is_seen_up_with_an_http_proxy_set(tmp_path, vllm, monkeypatch):  # noqa: F811
    import urllib.request

    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")  # a proxy that is down (or answers for everyone)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.setattr(urllib.request, "_opener", None)  # as in a fresh process: the opener reads the env once
    port = free_port()
    with server([str(vllm), "serve", "m", "--port", str(port)], dict(os.environ), tmp_path / "s.log", port, 4,
                poll_s=0.1):
        pass


# -- BUG-8: server arguments that escape the merge and the ownership checks -------------------------------------------
@pytest.mark.parametrize("args", [
    ["--attention-backend", "TRITON_MLA"],  # vLLM's own flag for attention_config.backend
    ["--attention_config", '{"backend": "TRITON_MLA"}'],  # FlexibleArgumentParser reads _ as -
    ["--attention-config.backend=TRITON_MLA"],  # vLLM's dotted JSON arguments
    ["--attention-config.backend", "TRITON_MLA"],
])
def test_every_spelling_of_another_backend_is_refused(args):
    with pytest.raises(UsageError):
        split_server_args(args, "FLASH_ATTN_MLA")


@pytest.mark.parametrize("flag", ["-O", "--compilation_config"])
def test_every_spelling_of_the_compilation_config_is_merged(tmp_path, flag):
    profile = _profile_copy(tmp_path, ("cuda_graphs: true", "cuda_graphs: false"))  # a variant sets cudagraph_mode
    rest, _, compilation = split_server_args([flag, '{"max_cudagraph_capture_size": 512}'], "FLASH_ATTN_MLA")
    assert compilation == {"max_cudagraph_capture_size": 512} and rest == ()
    plan = make_plan(profile, "m/m", [flag, '{"max_cudagraph_capture_size": 512}'])
    for v in plan.variants:
        cmd = plan.server_command(v)
        assert "max_cudagraph_capture_size" in cmd[cmd.index("--compilation-config") + 1]


def test_underscore_spellings_are_read_like_vllm_reads_them():
    plan = make_plan(PROFILE, "m/m", ["--load_format", "dummy", "--served_model_name", "ds"])
    assert plan.dummy_weights and plan.served_name == "ds"


@pytest.mark.parametrize("host", ["10.1.2.3", "127.0.0.2"])
def test_a_server_host_the_client_does_not_use_is_refused(host):
    with pytest.raises(UsageError):
        make_plan(PROFILE, "m/m", ["--host", host])


@pytest.mark.parametrize("args", [["--compilation-config", '{"cudagraph_mode": "PIECEWISE"}'], ["--enforce-eager"]])
def test_server_arguments_against_the_profiles_cuda_graphs_are_refused(args):
    # the profile says cuda_graphs: true (measured with full graphs)
    with pytest.raises(UsageError):
        make_plan(PROFILE, "m/m", args)


# -- BUG-9: the caller's environment reaches the 'default' server ------------------------------------------------------
@pytest.mark.parametrize("var", ["FORCE_NUM_KV_SPLITS", "VLLM_ATTENTION_BACKEND"])
def test_the_default_server_gets_no_inherited_attention_setting(var):
    plan = make_plan(PROFILE, "m/m", [])
    default = plan.variants[0]
    assert var not in plan.server_env(default, {"PATH": "/usr/bin", var: "4"})


# -- BUG-10: the GPU named in the summary ------------------------------------------------------------------------------
def test_the_gpu_named_is_the_one_the_servers_use(tmp_path):
    smi = tmp_path / "nvidia-smi"
    # as nvidia-smi does: every GPU, or the one -i names (nvidia-smi itself ignores CUDA_VISIBLE_DEVICES)
    smi.write_text("#!/bin/sh\nif [ \"$1\" = -i ] && [ \"$2\" = 1 ]; then echo 'NVIDIA H200'; exit; fi\n"
                   "printf 'NVIDIA A100-SXM4-80GB\\nNVIDIA H200\\n'\n")
    smi.chmod(0o755)
    assert gpu_name({"PATH": f"{tmp_path}:/usr/bin:/bin", "CUDA_VISIBLE_DEVICES": "1"}) == "NVIDIA H200"


# -- BUG-11: --traffic shapes the loads do not serve ------------------------------------------------------------------
def _traffic(*specs: str):
    from mla_tune.traffic_io import Traffic

    return Traffic(tuple((x, 1.0) for x in specs), "t.csv")


def test_a_multi_token_decode_shape_is_not_served_as_single_token_decodes():
    loads, notes = loads_from_traffic(_traffic("4q2s4k", "8q1s4k"), 500, 4)
    assert [x.concurrency for x in loads] == [8] and any(n.startswith("4q2s4k: decodes several tokens") for n in notes)
    with pytest.raises(UsageError, match="no shape the client can serve"):
        loads_from_traffic(_traffic("4q2s4k"), 500, 4)


def test_the_dropped_prefill_of_a_mixed_shape_is_said():
    loads, notes = loads_from_traffic(_traffic("8q1s1k_q4k"), 500, 4)
    assert any("8q1s1k_q4k" in n for n in notes), (loads, notes)


def test_the_served_decode_context_is_near_the_shapes():
    [load], notes = loads_from_traffic(_traffic("8q1s1k"), 500, 4)
    mean_context = load.input_len + load.output_len / 2
    assert abs(mean_context - 1024) / 1024 < 0.1 or notes, (load, notes)


# -- BUG-12: 30 unadjusted 95% intervals ----------------------------------------------------------------------------
def test_a_profile_that_changes_nothing_is_rarely_called_better_or_worse():
    import math
    import random

    plan = BenchPlan(PROFILE, "FLASH_ATTN_MLA", "m", "m", (), (), (),
                     tuple(Variant(v, "") for v in ("default", "profile", "flags")), loads_from([8, 64, 256], 100, 10, 1),
                     3, 8000, "vllm")
    rng = random.Random(1)
    sims, claimed = 200, 0
    for _ in range(sims):
        runs = []
        for start in plan.starts():
            for load in plan.loads:  # no variant effect: run-to-run noise only (1% TPOT, 2% p99 ITL, 3% TTFT)
                tpot = 10 * math.exp(rng.gauss(0, 0.01))
                values = {"output_throughput": 1000 / tpot, "mean_tpot_ms": tpot,
                          "median_itl_ms": tpot * math.exp(rng.gauss(0, 0.002)),
                          "p99_itl_ms": 15 * math.exp(rng.gauss(0, 0.02)),
                          "median_ttft_ms": 50 * math.exp(rng.gauss(0, 0.03))}
                runs.append(RunResult(start, load, values, "x"))
        claimed += any(r.verdict in ("better", "worse") for r in summarize(plan, runs, {}).ratios)
    assert claimed / sims <= 0.10, f"{claimed / sims:.0%} of null benches claim a gain or a loss"


# -- what holds ----------------------------------------------------------------------------------------------------------
def test_the_crossover_runs_each_variant_equally_often_before_and_after_the_default():
    plan = _plan(4, ("default", "profile", "flags"))
    order = [s.label for s in plan.starts()]
    assert order == ["r1-default", "r1-profile", "r1-flags", "r2-flags", "r2-profile", "r2-default",
                     "r3-default", "r3-profile", "r3-flags", "r4-flags", "r4-profile", "r4-default"]
    assert [s.index for s in plan.starts()] == list(range(12))


def test_ratios_pair_by_repeat_not_by_position_and_read_above_1_as_better():
    """A slow drift over the session and a variant 10% faster at every repeat: each metric's ratio is ~1.1
    whatever the order, throughput and latency agree, and flags (no change) is ~1."""
    plan = _plan(4, ("default", "profile", "flags"))
    runs = []
    for s in plan.starts():
        t = 10.0 * (1 + 0.01 * s.index) / (1.1 if s.variant.name == "profile" else 1.0)
        runs.append(RunResult(s, plan.loads[0], {m.key: (1000 / t if m.higher_is_better else t) for m in METRICS},
                              "x"))
    summary = summarize(plan, runs, {})
    for m in METRICS:
        p = summary.ratio("profile", plan.loads[0], m.key)
        f = summary.ratio("flags", plan.loads[0], m.key)
        judged = ("better", "same within noise") if m.judged else ("shown, not judged",) * 2
        assert p.repeats == 4 and 1.05 < p.ratio < 1.15 and p.verdict == judged[0], (m.key, p)
        assert 0.97 < f.ratio < 1.03 and f.verdict == judged[1], (m.key, f)


def test_a_variant_run_without_its_repeats_default_is_left_out_not_paired_with_another_default():
    plan = _plan(3)
    runs = [RunResult(s, plan.loads[0], {m.key: 10.0 for m in METRICS}, "x") for s in plan.starts()
            if s.label != "r2-default"]
    r = summarize(plan, runs, {}).ratio("profile", plan.loads[0], "mean_tpot_ms")
    assert r.repeats == 2


@pytest.mark.parametrize(("args", "rest", "attention", "compilation"), [
    (["--attention-config={\"a\": 1}", "--attention-config", "{\"b\": 2}"], (), {"a": 1, "b": 2}, {}),
    (["--compilation-config", "{\"x\": {\"y\": 1}}", "--max-num-seqs", "64"], ("--max-num-seqs", "64"), {},
     {"x": {"y": 1}}),
    (["--attention-config", "{\"backend\": \"FLASH_ATTN_MLA\"}"], (), {}, {}),
])
def test_the_json_configs_merge(args, rest, attention, compilation):
    r, a, c = split_server_args(args, "FLASH_ATTN_MLA")
    assert r == rest and a == {**attention, "backend": "FLASH_ATTN_MLA"} and c == compilation


@pytest.mark.parametrize(("args", "words"), [
    (["--port=9000"], "--port is not a server argument"),
    (["--model=x"], "--model is not a server argument"),
    (["--compilation-config", "[1]"], "must be a JSON object"),
    (["--attention-config="], "is not JSON"),
])
def test_owned_and_malformed_server_arguments_are_one_line(args, words):
    with pytest.raises(UsageError, match=words):
        split_server_args(args, "FLASH_ATTN_MLA")


def test_the_variants_differ_only_in_what_the_profile_sets():
    plan = make_plan(PROFILE, "m/m", ["--max-model-len", "4096", "--served-model-name", "ds"])
    cmds = {v.name: plan.server_command(v) for v in plan.variants}
    assert cmds["default"] == cmds["profile"]  # the plugin is the difference: its env
    assert dict(plan.variants[1].env) == {"MLA_TUNE_PROFILE": str(PROFILE.resolve())}
    flags = cmds["flags"]
    assert flags[:flags.index("--attention-config")] == cmds["default"][:flags.index("--attention-config")]
    assert all("--served-model-name" in plan.client_command(x, Path("d"), "r.json") for x in plan.loads)
    env = plan.server_env(plan.variants[0], {"MLA_TUNE_PROFILE": "/elsewhere.yaml", "VLLM_LOGGING_LEVEL": "ERROR"})
    assert "MLA_TUNE_PROFILE" not in env and env["VLLM_LOGGING_LEVEL"] == "INFO"


def test_a_stop_during_a_client_run_leaves_no_temporaries(tmp_path, vllm, model, monkeypatch):  # noqa: F811
    """Ctrl-C while a client runs: the result folder is removed, the server stopped, the exit 130."""
    monkeypatch.setenv("FAKE_VLLM_BENCH", "fail")  # (the client is not reached if the interrupt comes first)
    calls = []

    def interrupt(*a, **k):
        calls.append(1)
        raise KeyboardInterrupt

    monkeypatch.setattr(bench_mod, "run_client", interrupt)
    out = tmp_path / "out"
    r = bench(vllm, model, out, *SMALL)
    assert r.exit_code == 130 and calls and leftovers(out) == []
    [pid] = map(int, (tmp_path / "fake" / "pids").read_text().split())
    assert not _alive(pid)
    assert json.loads((out / "summary.json").read_text())["complete"] is False
