"""Hostile inputs, one section per class of issue 22: each test feeds what a hostile pass fed and checks the
guarantee the README's "What survives what" names (paths stay in their folder, tampered tables are refused, one
line instead of a traceback, bounded rounds, no terminal control sequences)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import optuna
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


# -- 2. no password at rest: the workers' job goes down a pipe, never into a file ------------------------------------
PG = os.environ.get("MLA_TUNE_TEST_POSTGRES")


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    d = tmp_path_factory.mktemp("recording")
    api.run_sweep(backend="TRITON_MLA", workload="spec:8q1s4k,64q1s4k", output=d / "s.jsonl", rounds=1,
                  runner=FakeRunner(optimum={"num_kv_splits": 4}))
    return f"replay:{d}"


def files_holding(root: Path, secret: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.is_symlink() and secret.encode() in p.read_bytes()]


def test_workers_get_the_storage_url_without_it_touching_disk(tmp_path, monkeypatch, recording):
    """The job (storage URL, password included) reaches a worker through its stdin; the worker's error names the
    database without the password."""
    from mla_tune.parallel import scale

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    monkeypatch.setenv("MLA_TUNE_LOCK_DIR", str(tmp_path / "locks"))
    monkeypatch.setattr(scale, "open_storage", lambda spec, create: None)  # the launcher's check: as if reachable
    secret = "Pw-of-the-db-42"
    launched = scale.launch(dict(backend="TRITON_MLA", workload="spec:8q1s4k"), gpus=["0", "1"],
                            storage=f"postgresql://mla:{secret}@127.0.0.1:1/mla_tune", runner=recording)
    assert [w.exit_code for w in launched.workers] == [1, 1]
    assert all("cannot open storage" in w.error and secret not in w.error and "***" in w.error
               for w in launched.workers), launched.workers
    assert not files_holding(tmp_path, secret)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["journal", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_kill_9_of_a_gpus_launcher_leaves_no_secret_on_disk(kind, tmp_path, recording):
    from mla_tune.storage.urls import open_storage, parse_storage

    if kind == "postgres":
        storage, secret = PG, urlsplit(PG).password
        store = open_storage(parse_storage(PG), create=True)
        for s in store.get_all_studies():  # a fresh test database
            optuna.delete_study(study_name=s.study_name, storage=store)
    else:  # a journal has no password: its path stands for one (it was in the job file too)
        secret = "Secret-Journal-Name-7"
        storage = str(tmp_path / f"{secret}.journal")
    tmp, locks = tmp_path / "tmp", tmp_path / "locks"
    tmp.mkdir()
    env = dict(os.environ, TMPDIR=str(tmp), MLA_TUNE_LOCK_DIR=str(locks), MLA_TUNE_REPLAY_DELAY_S="0.2",
               PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, "-m", "mla_tune.cli", "study", "--backend", "TRITON_MLA", "--workload",
                             "spec:8q1s4k,64q1s4k", "--runner", recording, "--storage", storage, "--gpus", "0,1"],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while len(list(locks.glob("*.lock"))) < 2 or not list(tmp.glob("mla-tune-workers-*")):
        assert time.monotonic() < deadline and proc.poll() is None, "the workers did not start"
        time.sleep(0.05)
    workers = [int(p.read_text()) for p in locks.glob("*.lock")]
    time.sleep(1.0)  # mid-trial
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in workers):  # they notice their stdin closing and stop
        assert time.monotonic() < deadline, "workers outlived their launcher"
        time.sleep(0.1)
    assert list(tmp.glob("mla-tune-workers-*"))  # the launcher could not clean up after itself ...
    assert not files_holding(tmp, secret)  # ... and left no secret there
    assert not [p for p in files_holding(tmp_path, secret) if not p.name.startswith(secret)]  # the journal itself


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_job_files_older_launchers_left_are_removed_at_the_next_start(tmp_path):
    from mla_tune.parallel.scale import STALE_JOB_S, remove_stale_jobs

    old = tmp_path / "mla-tune-workers-abc" / "worker0.job.json"
    new = tmp_path / "mla-tune-workers-def" / "worker1.job.json"
    for p in (old, new):
        p.parent.mkdir()
        p.write_text('{"storage": "postgresql://u:pw@h/db"}')
    os.utime(old, (time.time() - STALE_JOB_S - 5,) * 2)
    assert remove_stale_jobs(tmp_path) == [old]
    assert not old.exists() and new.exists()  # a launcher of an older version may be starting its workers now


# -- 5. one line, never a traceback: huge numbers, hostile profiles ---------------------------------------------------
GOLDEN_TABLE = ROOT / "tests" / "golden" / "table.yaml"
GOLDEN_PROFILE = ROOT / "tests" / "golden" / "profile.yaml"
H100 = f"replay:{ROOT / 'results' / 'sweeps' / 'h100'}"
HUGE = "9" * 400  # parses as a YAML and JSON integer; float() of it overflows


@pytest.mark.parametrize("command", [["show"], ["flags"], ["deploy", "-o", "p.yaml", "--vllm", "0.20.0"],
                                     ["diff", "SELF"], ["verify", "--runner", H100, "--rounds", "2"]])
@pytest.mark.parametrize("number", ["latency_ms.best", "speedup", "trials.failed", "ci.1"])
def test_a_table_with_a_400_digit_number_is_one_line(tmp_path, monkeypatch, command, number):
    monkeypatch.chdir(tmp_path)
    data = yaml.safe_load(GOLDEN_TABLE.read_text())
    *keys, last = [int(k) if k.isdigit() else k for k in number.split(".")]
    node = data["entries"][2]  # the tuned entry
    for k in keys:
        node = node[k]
    node[last] = 123456789
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(data).replace("123456789", HUGE))
    args = [command[0], "t.yaml", *["t.yaml" if a == "SELF" else a for a in command[1:]]]
    line = one_error_line(cli.invoke(app, args))
    assert line.startswith("mla-tune: error: t.yaml: entries[2].") and "expected a" in line
    assert not (tmp_path / "p.yaml").exists()


@pytest.mark.parametrize("traffic, key", [
    (f"schema_version: 1\nshapes:\n- spec: 64q1s4k\n  weight: {HUGE}\n", "shapes[0].weight"),
    (f"spec,weight\n64q1s4k,{HUGE}\n", "row 2.weight"),
    ("spec,weight\n64q1s4k,1e400\n", "row 2.weight"),
    (f"schema_version: 1\nshapes:\n- spec: {HUGE}q1s4k\n", "shapes[0].spec"),
], ids=["yaml weight", "csv weight", "csv 1e400", "yaml spec"])
def test_deploy_with_a_traffic_file_of_a_400_digit_number_is_one_line(tmp_path, monkeypatch, traffic, key):
    monkeypatch.chdir(tmp_path)
    name = "traffic.csv" if traffic.startswith("spec,") else "traffic.yaml"
    (tmp_path / name).write_text(traffic)
    r = cli.invoke(app, ["deploy", str(GOLDEN_TABLE), "-o", "p.yaml", "--vllm", "0.20.0", "--traffic", name])
    assert one_error_line(r).startswith(f"mla-tune: error: {name}: {key}: ")
    assert not (tmp_path / "p.yaml").exists()


@pytest.mark.parametrize("where", ["sample", "rel_err", "round", "sm_count", "gpu name"])
def test_a_replay_recording_with_a_hostile_number_is_one_line(tmp_path, monkeypatch, where):
    monkeypatch.chdir(tmp_path)
    src = ROOT / "results" / "sweeps" / "h100" / "deepseek-v3-tp1.jsonl"
    lines = src.read_text().splitlines()[:40]
    header, rec = json.loads(lines[0]), lines[5]
    if where == "sample":
        rec = rec.replace('"samples_ms": [', f'"samples_ms": [{HUGE}, ', 1)
    elif where == "rel_err":
        rec = re.sub(r'"rel_err": [^,}]+', f'"rel_err": {HUGE}', rec, count=1)
    elif where == "round":
        rec = rec.replace("{", f'{{"round": {HUGE}, ', 1)
    elif where == "sm_count":
        header["environment"]["gpu"]["sm_count"] = int(HUGE)
    else:
        header["environment"]["gpu"]["name"] = ["NVIDIA", "H100"]
    rec_dir = tmp_path / "rec"
    rec_dir.mkdir()
    (rec_dir / "s.jsonl").write_text("\n".join([json.dumps(header), *lines[1:5], rec, *lines[6:]]) + "\n")
    for args in (["study", "--backend", "FLASHMLA", "--workload", "spec:q1s1k", "--runner", f"replay:{rec_dir}",
                  "--storage", "s.journal"], ["plot", str(rec_dir / "s.jsonl"), "-o", "plots"]):
        line = one_error_line(cli.invoke(app, args))
        assert f"{rec_dir / 's.jsonl'}: line " in line, line
    assert not (tmp_path / "plots").exists()


def _profile(tmp_path: Path, edit) -> Path:
    return edited(GOLDEN_PROFILE, tmp_path / "profile.yaml", edit)


HOSTILE_PROFILES = {
    "tp not an integer": (lambda p: p["provenance"].update(tp="eight"), "provenance.tp: expected an integer >= 1"),
    "tp a fraction": (lambda p: p["provenance"].update(tp=1.5), "provenance.tp: expected an integer >= 1"),
    "tp a list": (lambda p: p["provenance"].update(tp=[1, 8]), "provenance.tp: expected an integer >= 1"),
    "tp huge": (lambda p: p["provenance"].update(tp=int(HUGE)), "provenance.tp: is 9999"),
    "model a list": (lambda p: p["provenance"].update(model=["deepseek-v3"]), "provenance.model: expected a string"),
    "measured_with not a list": (lambda p: p["provenance"].update(measured_with=7),
                                 "provenance.measured_with: expected a list of strings"),
    "measured_with a string": (lambda p: p["provenance"].update(measured_with="0.20.0 on H100"),
                               "provenance.measured_with: expected a list of strings"),
    "measured_with of numbers": (lambda p: p["provenance"].update(measured_with=[1, 2]),
                                 "provenance.measured_with[0]: expected a string"),
    "an integer key in per_batch": (lambda p: p["per_batch"].update({1: [{"tokens": 1, "value": 1}]}),
                                    "per_batch.1: expected a knob name"),
    "an integer key in global": (lambda p: p["global"].update({2: True}), "global.2: expected a knob name"),
    "gpu a list": (lambda p: p["match"].update(gpu=["H100"]), "match.gpu: expected a string"),
    "gpu a path": (lambda p: p["match"].update(gpu="../../H100"), "match.gpu: is '../../H100', expected a GPU's"),
    "vllm a mapping": (lambda p: p["match"].update(vllm={"v": 1}), "match.vllm: expected a string"),
    "heads huge": (lambda p: p["match"].update(num_q_heads=int(HUGE)), "match.num_q_heads: is 9999"),
    "tokens huge": (lambda p: p["per_batch"]["max_num_splits"][0].update(tokens=int(HUGE)),
                    "per_batch.max_num_splits[0].tokens: is 9999"),
    "context huge": (lambda p: p["per_batch"]["max_num_splits"][0].update(context=int(HUGE)),
                     "per_batch.max_num_splits[0].context: is 9999"),
    "a point a list": (lambda p: p["per_batch"]["max_num_splits"].__setitem__(0, [1, 32]),
                       "per_batch.max_num_splits[0]: expected a mapping"),
}


@pytest.mark.parametrize("case", HOSTILE_PROFILES)
def test_verify_of_a_hostile_profile_is_one_line(tmp_path, monkeypatch, case):
    monkeypatch.chdir(tmp_path)
    edit, words = HOSTILE_PROFILES[case]
    _profile(tmp_path, edit)
    line = one_error_line(cli.invoke(app, ["verify", "profile.yaml", "--runner", H100, "--rounds", "2"]))
    assert line.startswith(f"mla-tune: error: profile.yaml: {words}"), line


# -- 7. no terminal control sequence from data reaches the terminal ----------------------------------------------------
RAW_CONTROLS = ("\x1b", "\x9b", "\x07", "\r", "\x08", "\u202e")


def _controlled(tmp_path: Path) -> Path:
    def edit(t):
        t["provenance"]["gpu"]["name"] = "NVIDIA H100\x1b]0;pwned\x07\x1b[2J"
        t["provenance"]["vllm"] = "0.20.0\x9b5m"
        t["provenance"]["torch"] = "2.11\r\x1b[K\x08"
        t["provenance"]["cuda"] = "13.0\u202e"
        t["provenance"]["date"] = "2026-11-24\x1b[8m"

    return edited(GOLDEN_TABLE, tmp_path / "t.yaml", edit)


@pytest.mark.parametrize("command", [["show", "t.yaml"], ["diff", "t.yaml", "t.yaml"], ["flags", "t.yaml"],
                                     ["deploy", "t.yaml", "-o", "p.yaml", "--vllm", "0.20.0"],
                                     ["verify", "t.yaml", "--runner", H100, "--rounds", "2", "--max-rounds", "2"]])
def test_control_sequences_in_a_tables_strings_are_shown_escaped(tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "400")
    _controlled(tmp_path)
    r = cli.invoke(app, command)
    assert r.exit_code == 0, r.output
    assert not [c for c in RAW_CONTROLS if c in r.output], repr(r.output)
    if command[0] != "deploy":  # deploy prints the engine it serves, not the table's provenance
        assert "\\x1b]0;pwned\\x07\\x1b[2J" in r.output or "\\x9b5m" in r.output, r.output


def test_control_sequences_in_an_error_message_are_shown_escaped(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    edited(GOLDEN_TABLE, tmp_path / "t.yaml", lambda t: t["entries"][0].update({"no\x1b[2Jte": "x"}))
    line = one_error_line(cli.invoke(app, ["show", "t.yaml"]))
    assert "\x1b" not in line and "entries[0].no\\x1b[2Jte: unknown key" in line


def test_stored_study_names_and_messages_are_shown_escaped():
    from rich.console import Console

    from mla_tune.views.render import print_studies
    from mla_tune.views.text import printable

    assert printable("plain · text → x1.05 [0.9, 1.1]\n\tok") == "plain · text → x1.05 [0.9, 1.1]\n\tok"
    assert printable("a\x1b[2Jb\x9bc\x00d\x7f\u202e") == "a\\x1b[2Jb\\x9bc\\x00d\\x7f\\u202e"
    console = Console(record=True, width=300, force_terminal=False)

    class Summary:  # a stored study whose name someone wrote into the storage
        name, measured, failed, baseline_ms, best_ms, best_value, confirmed = \
            "H100/\x1b]0;x\x07m-tp1/FLASH_ATTN_MLA/q1s4k", 3, 0, 1.0, 0.9, 0.9, None

    print_studies(console, [Summary()])
    text = console.export_text()
    assert "\x1b" not in text and "\\x1b]0;x\\x07m-tp1" in text
