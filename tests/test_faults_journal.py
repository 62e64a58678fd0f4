"""Fault injection on a journal storage with real ``mla-tune study`` processes on the recorded H100 sweeps.

A process killed mid-trial whose journal then loses its last bytes, a garbage line in the middle of a journal,
and a file size limit (``ulimit -f``) hit mid-run; then, in-process, a full disk at each kind of write. Each asserts:
nothing complete lost (the re-run's table has the clean run's entries), one line for what was repaired or refused,
a non-zero exit for every refusal.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mla_tune.cli import app
from mla_tune.runners import register_runner
from mla_tune.storage import journal as journal_module
from mla_tune.storage.journal import JournalRepairedWarning
from mla_tune.tables.export import load_table

from .fakes import FakeRunner

ROOT = Path(__file__).resolve().parent.parent
STUDY = ["study", "--runner", f"replay:{ROOT / 'results/sweeps/h100'}", "--backend", "FLASH_ATTN_MLA",
         "--workload", "spec_decode"]
REPAIRED = "cut off an incomplete last record"


def command(*args: str, ulimit_kb: int | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "mla_tune.cli", *args]
    return ["bash", "-c", f'ulimit -f {ulimit_kb}; exec "$@"', "bash", *cmd] if ulimit_kb else cmd


def environment(where: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLA_TUNE_")}
    # Short heartbeats: the killed process's trial is stale by the time the re-run starts.
    return dict(env, MLA_TUNE_LOCK_DIR=str(where / "locks"), MLA_TUNE_HEARTBEAT_S="0.2", COLUMNS="200", **extra)


def mla_tune(where: Path, *args: str, ulimit_kb: int | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(command(*args, ulimit_kb=ulimit_kb), cwd=where, env=environment(where),
                          capture_output=True, text=True, timeout=180, check=False)


def entries(table: Path) -> list[tuple]:
    """What a table claims, without the measured numbers (two runs' confirmation samples differ in noise). Of the
    trial counts, measured and failed: after a crash the dead trial's retry and a new proposal of the same config
    can both run, and the second reuses the first's measurement (no GPU time), so ``reused`` may differ."""
    return sorted((e["shape"], e["kind"], e["tuned"], str(e["params"]), str(e["default_params"]),
                   e["trials"]["measured"], e["trials"]["failed"], str(e["samples"]))
                  for e in load_table(table)["entries"])


def lines_with(text: str, words: str) -> list[str]:
    return [ln for ln in text.splitlines() if words in ln]


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> tuple[Path, list[tuple]]:
    """A whole run: its journal and its table's entries."""
    where = tmp_path_factory.mktemp("clean")
    r = mla_tune(where, *STUDY, "--storage", "J", "--export", "t.yaml")
    assert r.returncode == 0, r.stderr
    return where / "J", entries(where / "t.yaml")


@pytest.mark.slow
def test_killed_mid_trial_and_last_bytes_lost_the_rerun_repairs_in_one_line_and_completes(tmp_path, clean):
    # each trial is one paired recording (one replayed call): slow enough that the kill lands in the first third
    proc = subprocess.Popen(command(*STUDY, "--storage", "J"), cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=environment(tmp_path, MLA_TUNE_REPLAY_DELAY_S="0.05"))
    journal = tmp_path / "J"
    deadline = time.monotonic() + 60
    while (not journal.exists() or journal.stat().st_size < clean[0].stat().st_size // 3) \
            and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # SIGKILL mid-append leaves Optuna's lock file behind, which Optuna breaks only after its 30 s grace period.
    (tmp_path / "J.lock").unlink(missing_ok=True)
    size = journal.stat().st_size
    assert 0 < size < clean[0].stat().st_size
    os.truncate(journal, size - 17)  # a crash in the middle of writing the last record
    r = mla_tune(tmp_path, *STUDY, "--storage", "J", "--export", "t.yaml")
    assert r.returncode == 0, r.stderr
    assert len(lines_with(r.stderr, REPAIRED)) == 1, r.stderr
    assert len(list(tmp_path.glob("J.torn-*"))) == 1
    assert entries(tmp_path / "t.yaml") == clean[1]


@pytest.mark.slow
def test_a_garbage_line_in_the_middle_is_refused_in_one_line_and_the_file_left_untouched(tmp_path, clean):
    lines = clean[0].read_bytes().splitlines(keepends=True)
    bad = b"".join(lines[:50]) + b"\x00\xff{\"op_code\": oops\n" + b"".join(lines[50:])
    (tmp_path / "J").write_bytes(bad)
    for args in (STUDY, ["show"], ["export", "-o", "t.yaml", "--backend", "FLASH_ATTN_MLA"]):
        r = mla_tune(tmp_path, *args, "--storage", "J")
        assert r.returncode != 0
        assert r.stderr.strip() == (
            "mla-tune: error: journal J line 51: not JSON (UnicodeDecodeError); nothing was written (move it "
            "away (mv J J.bad) to start a new one, or cut it at that line (head -n 50 J > J.cut && mv J.cut J), "
            "losing the records after it)")
    assert (tmp_path / "J").read_bytes() == bad
    assert sorted(p.name for p in tmp_path.iterdir()) == ["J"]


@pytest.fixture(scope="module")
def full_disk(tmp_path_factory, clean) -> tuple[Path, int, subprocess.CompletedProcess]:
    """A run under ``ulimit -f`` (half the clean journal's size): the limit is hit mid-run."""
    where = tmp_path_factory.mktemp("full")
    limit_kb = clean[0].stat().st_size // 1024 // 2
    return where, limit_kb, mla_tune(where, *STUDY, "--storage", "J", ulimit_kb=limit_kb)


@pytest.mark.slow
def test_a_file_size_limit_mid_run_stops_it_and_a_normal_rerun_repairs_and_completes(full_disk, clean):
    where, limit_kb, r = full_disk
    assert r.returncode not in (0, -signal.SIGXFSZ), r.stderr
    assert "cannot write journal J: File too large (EFBIG)" in r.stderr
    assert (where / "J").stat().st_size == limit_kb * 1024  # whole records, then a torn one
    assert not (where / "J.lock").exists()
    r = mla_tune(where, *STUDY, "--storage", "J", "--export", "t.yaml")
    assert r.returncode == 0, r.stderr
    assert len(lines_with(r.stderr, REPAIRED)) == 1, r.stderr
    assert entries(where / "t.yaml") == clean[1]


def _fail_first_write_of(marker: bytes, monkeypatch) -> None:
    """The first journal write holding ``marker`` hits a full disk, after part of it reached the file."""
    real = journal_module._write_all
    hit = []

    def full_disk(fd: int, data: bytes) -> None:
        if not hit and marker in data:
            hit.append(marker)
            real(fd, data[:9])
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, data)

    monkeypatch.setattr(journal_module, "_write_all", full_disk)


# Optuna's _run_trial turns a failed write inside a trial (the objective's attrs, the tell) into
# AssertionError("Should not reach."), the StorageError only in its __context__: the CLI (handle_errors) finds it.


@pytest.mark.parametrize("marker", [
    pytest.param(b'{"op_code":4,', id="create-trial"),
    pytest.param(b'{"op_code":8,', id="trial-user-attr"),
    pytest.param(b'"state":1,', id="tell-complete"),
    pytest.param(b'"mla_tune:heartbeat"', id="heartbeat-thread"),  # the next write says it
])
def test_a_full_disk_at_any_write_is_one_line_and_the_rerun_completes(tmp_path, monkeypatch, marker):
    monkeypatch.chdir(tmp_path)
    register_runner("fake", lambda arg: FakeRunner(optimum={"num_kv_splits": 16}))
    args = ["study", "--backend", "TRITON_MLA", "--workload", "spec:64q1s4k", "--runner", "fake", "--storage", "J"]
    _fail_first_write_of(marker, monkeypatch)
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.exception
    assert "mla-tune: error: cannot write journal J: No space left on device (ENOSPC)" in r.output
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    with pytest.warns(JournalRepairedWarning):
        assert CliRunner().invoke(app, args).exit_code == 0
