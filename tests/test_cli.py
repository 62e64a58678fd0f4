"""The CLI in-process (CliRunner) and once as a real subprocess; bad input exits non-zero, writes nothing."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mla_tune.cli import app
from mla_tune.runners import register_runner

from .fakes import FakeRunner

cli = CliRunner()
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLA_TUNE_STORAGE", raising=False)
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps tables to the terminal width
    register_runner("fake", lambda arg: FakeRunner(optimum={"num_kv_splits": 16}))
    return tmp_path


def error_line(result) -> str:
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1, result.output
    return lines[0]


def test_help_lists_the_commands():
    r = cli.invoke(app, ["--help"])
    assert r.exit_code == 0
    for cmd in ("study", "export", "show", "workloads", "spaces", "backends", "sweep"):
        assert cmd in r.output


@pytest.mark.parametrize("args, words", [
    (["--backend", "FLASH_MLA", "--workload", "decode_4k"], ["unknown backend 'FLASH_MLA'", "FLASH_ATTN_MLA"]),
    (["--backend", "FLASHMLA_SPARSE", "--workload", "decode_4k"], ["FLASHMLA_SPARSE is not tuned", "top-k",
                                                                   "tunable backends: CUTLASS_MLA"]),
    (["--backend", "FLASHMLA", "--workload", "decode_5k"], ["unknown workload", "decode_4k"]),
    (["--backend", "FLASHMLA", "--workload", "decode_4k", "--model", "llama"], ["unknown model", "kimi-k2"]),
    (["--backend", "FLASHMLA", "--workload", "decode_4k", "--sampler", "cmaes"], ["unknown sampler", "tpe"]),
    (["--backend", "FLASHMLA", "--workload", "spec:64q1x4k"], ["segment '64q1x4k'"]),
    (["--backend", "FLASHMLA", "--workload", "decode_4k", "--runner", "sim"], ["unknown runner", "replay"]),
    (["--backend", "FLASHMLA", "--workload", "decode_4k", "--tp", "3"], ["does not divide"]),
    (["--backend", "FLASHMLA", "--workload", "decode_4k", "--kv-cache-dtype", "int4"], ["unknown kv-cache dtype"]),
])
def test_bad_names_exit_2_with_the_valid_choices_and_write_nothing(in_tmp, args, words):
    r = cli.invoke(app, ["study", *args, "--runner", "fake"] if "--runner" not in args else ["study", *args])
    assert r.exit_code == 2
    line = error_line(r)
    for w in words:
        assert w in line
    assert not list(in_tmp.iterdir())


def test_study_export_show_round_trip(in_tmp):
    r = cli.invoke(app, ["study", "--backend", "TRITON_MLA", "--workload", "spec:64q1s4k", "--runner", "fake",
                         "--export", "table.yaml"])
    assert r.exit_code == 0, r.output
    assert "Fake100/deepseek-v3-tp1/TRITON_MLA/64q1s4k" in r.output and "wrote table.yaml" in r.output
    # not a terminal (as in a log file): progress is a line per step, not a bar drawn only at the end
    assert "Fake100/deepseek-v3-tp1/TRITON_MLA/64q1s4k: measuring up to " in r.output
    assert "Fake100/deepseek-v3-tp1/TRITON_MLA/64q1s4k: confirmed x1.2" in r.output  # the planted 0.8 optimum
    assert (in_tmp / "results" / "studies.journal").exists()
    r = cli.invoke(app, ["show", "table.yaml"])
    assert r.exit_code == 0 and "64q1s4k" in r.output and "num_kv_splits=16" in r.output
    r = cli.invoke(app, ["show"])
    assert r.exit_code == 0 and "TRITON_MLA/64q1s4k" in r.output
    r = cli.invoke(app, ["export", "-o", "again.yaml", "--backend", "TRITON_MLA"])
    assert r.exit_code == 0 and (in_tmp / "again.yaml").read_text() == (in_tmp / "table.yaml").read_text()


def test_unavailable_backend_stops_before_writing(in_tmp):
    r = cli.invoke(app, ["study", "--backend", "CUTLASS_MLA", "--workload", "decode_4k", "--runner", "fake"])
    assert r.exit_code == 1
    assert "CUTLASS_MLA cannot run here: needs compute capability 10.x" in error_line(r)
    assert not list(in_tmp.iterdir())


def test_no_gpu_means_one_line_and_nothing_written(in_tmp):
    r = cli.invoke(app, ["study", "--backend", "FLASH_ATTN_MLA", "--workload", "decode_4k"])
    assert r.exit_code != 0
    assert "replay" in error_line(r)
    assert not list(in_tmp.iterdir())


def test_unreachable_storage_is_one_line(in_tmp):
    r = cli.invoke(app, ["study", "--backend", "TRITON_MLA", "--workload", "spec:8q1s1k", "--runner", "fake",
                         "--storage", "postgresql://mla:secret@127.0.0.1:1/nowhere"])
    assert r.exit_code == 1
    line = error_line(r)
    assert "cannot open storage postgresql://mla:***@127.0.0.1:1/nowhere" in line and "secret" not in line


def test_export_and_show_errors(in_tmp):
    r = cli.invoke(app, ["export", "-o", "t.yaml", "--backend", "FLASHMLA"])
    assert r.exit_code == 1 and "no study storage at results/studies.journal" in error_line(r)
    (in_tmp / "bad.yaml").write_text("schema_version: 1\nkind: nope\n")
    r = cli.invoke(app, ["show", "bad.yaml"])
    assert r.exit_code == 2 and "bad.yaml: kind" in error_line(r)
    assert not (in_tmp / "t.yaml").exists() and not (in_tmp / "results").exists()


def test_listings():
    for cmd in (["workloads"], ["spaces"], ["spaces", "--models"], ["backends", "--runner", "fake"]):
        r = cli.invoke(app, cmd)
        assert r.exit_code == 0, r.output
    assert "spec_decode" in cli.invoke(app, ["workloads"]).output
    assert "needs compute capability 10.x" in cli.invoke(app, ["backends", "--runner", "fake"]).output


def test_entry_point_runs_as_a_program():
    env = dict(os.environ, COLUMNS="120")
    out = subprocess.run([sys.executable, "-m", "mla_tune.cli", "--help"], capture_output=True, text=True, env=env,
                         timeout=60)
    assert out.returncode == 0 and "study" in out.stdout


def test_sweep_refuses_the_replay_runner(in_tmp):
    r = cli.invoke(app, ["sweep", "--backend", "FLASHMLA", "--workload", "spec:8q4s1k", "-o", "s.jsonl",
                         "--runner", f"replay:{ROOT / 'results/sweeps/h100'}"])
    assert r.exit_code == 2 and "only copy a recording" in error_line(r) and not (in_tmp / "s.jsonl").exists()


def test_a_confirmation_that_keeps_the_default_never_says_confirmed(in_tmp):
    """Every config of this fake is slower than vLLM's default: the progress line says the default was kept."""
    register_runner("fake-flat", lambda arg: FakeRunner())
    r = cli.invoke(app, ["study", "--backend", "TRITON_MLA", "--workload", "spec:64q1s4k", "--runner", "fake-flat"])
    assert r.exit_code == 0, r.output
    name = "Fake100/deepseek-v3-tp1/TRITON_MLA/64q1s4k"
    last = [ln for ln in r.output.splitlines() if ln.startswith(name + ":")][-1]
    assert re.fullmatch(rf"{name}: vLLM's default kept: best x[\d.]+ \[[\d.]+, [\d.]+\] is not a gain beyond noise "
                        r"\(\d+ rounds, [\d.]+ GPU s\)", last), last
    assert f"{name}: confirmed" not in r.output


def test_the_progress_bar_ends_with_what_the_confirmation_found():
    from rich.console import Console

    from mla_tune.study.progress import Progress
    from mla_tune.views.render import ProgressView

    for words in ("confirmed x1.073 [1.070, 1.076] (trial #4; 6 rounds, 1.2 GPU s)",
                  "vLLM's default kept: best x1.004 [0.998, 1.010] is not a gain beyond noise (6 rounds, 1.2 GPU s)"):
        console = Console(force_terminal=True, width=200, record=True)
        with ProgressView(console) as view:
            view.update(Progress("s", "trial", 8, 8, 0.2, 1.07))
            view.update(Progress("s", "done", 6, 6, message=words))
            info = view._progress.tasks[0].fields["info"]
        assert info.endswith(words)
        assert ("confirmed" in info) == words.startswith("confirmed")


def test_sweep_help_does_not_offer_the_runner_it_refuses():
    r = cli.invoke(app, ["sweep", "--help"])
    assert r.exit_code == 0 and "--runner" in r.output
    assert "replay:" not in r.output and "replay runner is refused" in " ".join(r.output.split())
    assert "replay:PATH" in cli.invoke(app, ["study", "--help"]).output  # where replay works, it is offered


@pytest.mark.parametrize("extra", [[], ["--gpus", "0"]])
def test_replay_of_unrecorded_shapes_is_refused_before_writing(in_tmp, extra):
    r = cli.invoke(app, ["study", "--runner", f"replay:{ROOT / 'results/sweeps/h100'}", "--backend", "FLASHMLA",
                         "--workload", "decode_64k", "--tp", "8", *extra])
    assert r.exit_code == 1
    line = error_line(r)
    assert "FLASHMLA deepseek-v3-tp8 kv auto q1s64k is not recorded" in line
    assert not list(in_tmp.iterdir())


def test_gpus_with_an_unusable_runner_writes_nothing(in_tmp):
    r = cli.invoke(app, ["study", "--backend", "FLASHMLA", "--workload", "decode_4k", "--gpus", "0",
                         "--runner", "replay:/nonexistent"])
    assert r.exit_code == 1 and "no recorded sweeps" in error_line(r)
    assert not list(in_tmp.iterdir())


def test_failed_trials_print_no_traceback(in_tmp):
    register_runner("failing", lambda arg: FakeRunner(fail={"num_kv_splits": 4}))
    r = cli.invoke(app, ["study", "--backend", "TRITON_MLA", "--workload", "spec:8q1s1k", "--runner", "failing"])
    assert r.exit_code == 0 and "Traceback" not in r.output


@pytest.mark.parametrize("text, key", [
    ("schema_version: 1\nkind: mla-tune/tuning-table\n", "backend"),
    ("schema_version: 1\nkind: mla-tune/tuning-table\nprovenance: {runner: vllm, gpu: {name: x, compute_capability: '9.0', "
     "sm_count: 1}}\nbackend: B\nmodel: {}\nkv_cache_dtype: auto\nblock_size: 64\nobjective: per-shape\nworkloads: []\n"
     "entries: []\n", "model.model"),
    ("schema_version: 1\nkind: mla-tune/tuning-table\nprovenance: {runner: vllm, gpu: {name: x, compute_capability: '9.0', "
     "sm_count: 1}}\nbackend: B\nmodel: {model: m, tp: 1, num_q_heads: 8}\nkv_cache_dtype: auto\nblock_size: 64\n"
     "objective: per-shape\nworkloads: []\nentries: [1]\n", "entries[0]"),
])
def test_show_of_a_malformed_table_names_file_and_key(in_tmp, text, key):
    (in_tmp / "t.yaml").write_text(text)
    r = cli.invoke(app, ["show", "t.yaml"])
    assert r.exit_code == 2 and f"t.yaml: {key}" in error_line(r)


def test_help_is_plain_text_with_help_for_every_option():
    import typer.main

    r = cli.invoke(app, ["--help"])
    cut = re.compile(r"\w\.\.\.$", re.M)  # Click's cut-off summary ("re-running the same...")
    assert r.exit_code == 0 and "<bool>" not in r.output and not cut.search(r.output.split("Commands:")[1])
    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        out = cli.invoke(app, [name, "--help"]).output
        assert "<bool>" not in out, name
        for param in command.params:
            assert getattr(param, "help", None), f"{name} {param.name} has no help text"
    assert all(getattr(p, "help", None) for p in group.params)


def test_backends_without_the_gpu_runner_lists_every_backend_and_why(monkeypatch):
    from mla_tune import runners
    from mla_tune.errors import RunnerUnavailableError
    from mla_tune.space import BACKENDS

    def no_torch(arg):
        raise RunnerUnavailableError("torch is not installed", hint="run on a GPU host with `pip install "
                                     "'mla-tune[vllm]'`, or use --runner replay:results/sweeps/h100")

    monkeypatch.setitem(runners._REGISTRY, "vllm", no_torch)
    r = cli.invoke(app, ["backends"])
    assert r.exit_code == 0, r.output
    assert r.output.startswith("runner vllm cannot start here: torch is not installed (run on a GPU host with "
                               "`pip install 'mla-tune[vllm]'`")  # the [vllm] survives the terminal markup
    for b in (*BACKENDS, "fa3", "trtllm"):
        assert re.search(rf"│ {b} +│ \w+ +│ no +│ torch is not installed", r.output), b
    r = cli.invoke(app, ["backends", "--runner", "replay:/nonexistent"])  # the user's path to fix: an error
    assert r.exit_code == 1 and "no recorded sweeps" in error_line(r)


def test_a_log_gets_a_few_lines_per_study_with_labelled_counts(in_tmp):
    r = cli.invoke(app, ["study", "--backend", "TRITON_MLA", "--workload", "spec:64q1s4k", "--runner", "fake"])
    name = "Fake100/deepseek-v3-tp1/TRITON_MLA/64q1s4k"
    lines = [ln for ln in r.output.splitlines() if ln.startswith(name + ":")]
    assert lines[0] == f"{name}: measuring up to 8 configs"
    assert re.fullmatch(rf"{name}: 8/8 configs measured, best [\d.]+ ms \(x[\d.]+ vs default\)", lines[1])
    assert re.fullmatch(rf"{name}: confirming 3 candidate\(s\): trial #\d+, trial #\d+, trial #\d+ against "
                        "vLLM's default", lines[2])
    assert re.fullmatch(rf"{name}: confirmed x1\.2\d\d \[[\d.]+, [\d.]+\] \(trial #\d+; \d+ rounds, [\d.]+ GPU s\)",
                        lines[-1]), lines[-1]
    again = cli.invoke(app, ["study", "--backend", "TRITON_MLA", "--workload", "spec:64q1s4k", "--runner", "fake"])
    lines = [ln for ln in again.output.splitlines() if ln.startswith(name + ":")]
    assert lines == [f"{name}: resumed: 8/8 configs measured"]  # never "best - ms"


def test_weighted_spec_lists_and_traffic_files_from_the_command_line(in_tmp):
    r = cli.invoke(app, ["study", "--backend", "TRITON_MLA", "--workload", "spec:8q1s4k@3,64q1s4k", "--runner",
                         "fake", "--objective", "mix", "--trials", "3", "--export", "mix.yaml"])
    assert r.exit_code == 0, r.output
    assert "Fake100/deepseek-v3-tp1/TRITON_MLA/mix:spec:8q1s4k@3,64q1s4k" in r.output
    assert "workload: spec:8q1s4k@3,64q1s4k" in (in_tmp / "mix.yaml").read_text()
    (in_tmp / "prod.csv").write_text("spec,weight\n8q1s4k,3\n64q1s4k,1\n")
    r = cli.invoke(app, ["study", "--backend", "TRITON_MLA", "--workload", "traffic:prod.csv", "--runner", "fake",
                         "--objective", "mix", "--trials", "3"])
    assert r.exit_code == 0 and "TRITON_MLA/mix:traffic:prod" in r.output
    r = cli.invoke(app, ["show", "--workload", "traffic:prod.csv"])
    assert "mix:traffic:prod" in r.output and "mix:spec:" not in r.output
    for bad, words in (("spec:8q1s4k@0", "weight '0' is not a number > 0"), ("traffic:none.csv", "none.csv")):
        r = cli.invoke(app, ["study", "--backend", "TRITON_MLA", "--workload", bad, "--runner", "fake"])
        assert r.exit_code == 2 and words in error_line(r)


def test_show_filters_by_tp_and_gpu_and_names_the_demo_storage(in_tmp):
    for tp in ("1", "8"):
        cli.invoke(app, ["study", "--backend", "TRITON_MLA", "--workload", "spec:64q1s4k", "--runner", "fake",
                         "--tp", tp, "--trials", "2"])
    out = cli.invoke(app, ["show", "--tp", "8", "--gpu", "Fake100"]).output
    assert "deepseek-v3-tp8" in out and "deepseek-v3-tp1" not in out
    assert "no studies" in cli.invoke(app, ["show", "--gpu", "H100"]).output
    (in_tmp / "results/studies.journal").rename(in_tmp / "elsewhere.journal")
    (in_tmp / "results/demo").mkdir()
    (in_tmp / "results/demo/studies.journal").write_text("")
    r = cli.invoke(app, ["show"])
    assert "no study storage at results/studies.journal (pass one with --storage: results/demo/studies.journal)" \
        in error_line(r)


def test_study_traffic_is_the_workload_traffic_file(in_tmp):
    (in_tmp / "prod.yaml").write_text("schema_version: 1\nkind: mla-tune/traffic\nshapes:\n"
                                      "  - {spec: 8q1s4k, weight: 3}\n  - {spec: 64q1s4k, weight: 1}\n")
    base = ["study", "--backend", "TRITON_MLA", "--runner", "fake", "--trials", "2"]
    r = cli.invoke(app, [*base, "--traffic", "prod.yaml", "--export", "t.yaml"])
    assert r.exit_code == 0, r.output
    assert "TRITON_MLA/8q1s4k" in r.output and "TRITON_MLA/64q1s4k" in r.output
    assert "traffic:prod" in (in_tmp / "t.yaml").read_text()  # the studies' workload, by the file's name
    again = cli.invoke(app, [*base, "--workload", "traffic:prod.yaml"])
    assert again.exit_code == 0 and "resumed: 2/2 configs measured" in again.output
    for args, words in ((["--workload", "decode_4k", "--traffic", "prod.yaml"], "not both"),
                        ([], "give --workload W or --traffic FILE"), (["--traffic", "nope.csv"], "nope.csv")):
        r = cli.invoke(app, [*base, *args])
        assert r.exit_code == 2 and words in error_line(r)


@pytest.mark.parametrize("args", [["--help"], ["workloads"], ["spaces"], ["backends", "--runner", "fake"],
                                  ["show", str(ROOT / "results/h200/run1/tables/FLASH_ATTN_MLA-deepseek-v3-tp1.yaml")]])
def test_listings_and_help_import_neither_optuna_nor_numpy(args):
    """What makes them answer at once (bench/cli_speed.py times them): Optuna and numpy only where studies are."""
    code = ("import sys\nfrom mla_tune.cli import app\nfrom mla_tune.runners import register_runner\n"
            "from tests.fakes import FakeRunner\nregister_runner('fake', lambda arg: FakeRunner())\n"
            "try:\n    app(sys.argv[1:], prog_name='mla-tune')\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "print(sorted(m for m in ('optuna', 'numpy', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines()[-1] == "[]"
