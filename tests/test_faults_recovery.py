"""Fault injection with real processes and real storages: kill -9, SIGTERM, SIGINT, a database stopped mid-study,
and three identical studies started at once on SQLite, each followed by an immediate re-run of the same command.

Every case asserts what the README promises: nothing complete is lost, nothing is left RUNNING or WAITING after
recovery, every config is measured, and the table is complete or refused in one line with a non-zero exit. The
runner replays the H100 recordings, slowed down (``MLA_TUNE_REPLAY_DELAY_S``) so that signals land mid-trial. The
heartbeat grace period is set to 90 s: recovery here must not wait for it (dead local processes are known at once).
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from mla_tune.storage.urls import open_storage, parse_storage
from mla_tune.study.sampling import KEY_ATTR, recorded_status
from mla_tune.tables.export import load_table

ROOT = Path(__file__).resolve().parent.parent
STUDY = "H100-replay/deepseek-v3-tp1/FLASH_ATTN_MLA/64q1s4k"
ARGS = ("--backend", "FLASH_ATTN_MLA", "--workload", "spec:64q1s4k", "--runner",
        f"replay:{ROOT / 'results' / 'sweeps' / 'h100'}", "--confirm-top", "1", "--confirm-rounds", "2")
N_CONFIGS = 18  # FLASH_ATTN_MLA on 64q1s4k with the prefill kernels recorded on the H100
PG = os.environ.get("MLA_TUNE_TEST_POSTGRES")

pytestmark = pytest.mark.slow


def study_cli(storage: str, export: Path, tmp_path: Path, delay: float = 0.05) -> subprocess.Popen:
    env = dict(os.environ, MLA_TUNE_REPLAY_DELAY_S=str(delay), MLA_TUNE_HEARTBEAT_S="30",
               MLA_TUNE_LOCK_DIR=str(tmp_path / "locks"), COLUMNS="200")
    return subprocess.Popen([sys.executable, "-m", "mla_tune.cli", "study", *ARGS, "--storage", storage,
                             "--export", str(export)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)


def fresh_storage(kind: str, tmp_path: Path) -> str:
    """A storage of ``kind`` with its schema made and no studies (so the processes under test share it at once)."""
    url = {"journal": str(tmp_path / "s.journal"), "sqlite": f"sqlite:///{tmp_path / 's.db'}", "postgres": PG}[kind]
    store = open_storage(parse_storage(url), create=True)
    for s in optuna.get_all_study_summaries(store, include_best_trial=False):
        optuna.delete_study(study_name=s.study_name, storage=store)
    return url


_open: dict[str, optuna.storages.BaseStorage] = {}


def trials(storage: str) -> list:
    if storage not in _open:  # one connection per storage: polling must not load the 2 cores it watches
        _open[storage] = open_storage(parse_storage(storage), create=False)
    try:
        return optuna.load_study(study_name=STUDY, storage=_open[storage]).trials
    except KeyError:
        return []


def wait_for(storage: str, ready, timeout_s: float = 30.0) -> list:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        ts = trials(storage)
        if ready(ts):
            return ts
        time.sleep(0.05)
    raise AssertionError("the study did not get there in time")


def measuring(ts: list) -> bool:
    return any(t.state == TrialState.RUNNING and "status" not in t.user_attrs and t.params for t in ts)


def assert_recovered(storage: str, table: Path, kept: dict[int, float]) -> None:
    """Nothing complete lost, nothing RUNNING or WAITING, every config measured once, the table complete."""
    ts = trials(storage)
    for number, value in kept.items():
        assert ts[number].state == TrialState.COMPLETE and ts[number].value == value, number
    assert not [(t.number, t.state.name) for t in ts if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    keys = [t.user_attrs[KEY_ATTR] for t in ts if recorded_status(t) and "duplicate_of" not in t.user_attrs]
    assert len(keys) == len(set(keys)) == N_CONFIGS
    [entry] = load_table(table)["entries"]
    assert entry["trials"]["measured"] == N_CONFIGS


def kill_9(proc: subprocess.Popen, journal: str | None) -> None:
    """SIGKILL, for a journal file at a moment its writer does not hold the journal's lock file: Optuna's lock is a
    file that a killed holder leaves behind, so the next writer waits out the lock's 30 s grace period first (a
    stall of the storage layer, not of recovery, left out here)."""
    for _ in range(200):
        proc.send_signal(signal.SIGSTOP)
        if journal is None or not Path(journal + ".lock").exists():
            break
        proc.send_signal(signal.SIGCONT)
        time.sleep(0.002)
    proc.kill()


def complete(ts: list) -> dict[int, float]:
    return {t.number: t.value for t in ts if t.state == TrialState.COMPLETE}


def one_line_error(err: str) -> str:
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("mla-tune: error: "), err
    return last


@pytest.mark.parametrize("kind", ["journal", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_kill_9_at_random_points_then_an_immediate_rerun_loses_nothing_and_measures_everything(kind, tmp_path):
    storage, table = fresh_storage(kind, tmp_path), tmp_path / "t.yaml"
    rng, kept = random.Random(1009), {}
    for _ in range(3):
        proc = study_cli(storage, table, tmp_path)
        wait_for(storage, measuring)
        time.sleep(rng.uniform(0.0, 0.5))
        kill_9(proc, storage if kind == "journal" else None)
        proc.communicate()
        kept |= complete(trials(storage))
    started = time.monotonic()
    proc = study_cli(storage, table, tmp_path)
    _, err = proc.communicate(timeout=80)
    assert proc.returncode == 0, err
    assert time.monotonic() - started < 60  # the dead runs' trials were not waited out (90 s grace period)
    assert_recovered(storage, table, kept)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_mid_study_leave_nothing_running_or_waiting(sig, tmp_path):
    storage, table = fresh_storage("journal", tmp_path), tmp_path / "t.yaml"
    proc = study_cli(storage, table, tmp_path, delay=0.2)
    wait_for(storage, lambda ts: len(ts) > 2 and measuring(ts))
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("mla-tune: interrupted; finished trials are kept")
    ts = trials(storage)
    assert not [t.number for t in ts if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert ts[-1].state == TrialState.FAIL and "status" not in ts[-1].user_attrs  # stopped mid-measurement
    assert not table.exists()
    kept = complete(ts)
    proc = study_cli(storage, table, tmp_path)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert_recovered(storage, table, kept)


def test_three_identical_studies_at_once_on_sqlite_end_complete_or_refused_in_one_line(tmp_path):
    """SQLite is refused for --gpus workers, but nothing stops a user from starting the same study three times."""
    # Schema made beforehand, so that the three share the study from their first trial (three processes creating
    # the SQLite schema at once can also refuse, in one line: the storage layer's case, not this one's).
    storage = fresh_storage("sqlite", tmp_path)
    tables = [tmp_path / f"t{i}.yaml" for i in range(3)]
    procs = [study_cli(storage, t, tmp_path) for t in tables]
    finished = 0
    for proc, table in zip(procs, tables):
        out, err = proc.communicate(timeout=120)
        if proc.returncode == 0:
            finished += 1
            [entry] = load_table(table)["entries"]
            assert entry["trials"]["measured"] == N_CONFIGS  # never a table of a study short of a config
            shown = re.search(re.escape(STUDY) + r"\W+(\d+)", out)  # the outcome it printed as it confirmed
            assert shown and int(shown[1]) == N_CONFIGS, out
        else:
            one_line_error(err)
            assert not table.exists()
    kept = complete(trials(storage))
    if finished < 3:  # the same command again finishes what the refused ones left
        proc = study_cli(storage, tables[0], tmp_path)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    assert_recovered(storage, tables[0], kept)
    confirmation = optuna.load_study(study_name=STUDY, storage=_open[storage]).user_attrs["confirmation"]
    assert confirmation["trials"] == N_CONFIGS


SWEEP = """
import os, signal, sys
sys.path.insert(0, {root!r})
from mla_tune import api
from tests.fakes import FakeRunner

class Stopped(FakeRunner):
    def on_measure(self):
        if self.events == {at} + 1:
            os.kill(os.getpid(), signal.SIGTERM)  # as a scheduler stopping the job would

try:
    api.run_sweep(backend="FLASH_ATTN_MLA", workload="spec:64q1s4k", output={out!r}, runner=Stopped())
except KeyboardInterrupt:
    sys.exit(130)
"""


def test_sigterm_stops_a_sweep_like_ctrl_c_and_the_sweep_resumes(tmp_path):
    out = tmp_path / "sweep.jsonl"
    proc = subprocess.run([sys.executable, "-c", SWEEP.format(root=str(ROOT), at=5, out=str(out))], timeout=60,
                          check=False)
    assert proc.returncode == 130
    assert len(out.read_text().splitlines()) == 1 + 5  # the header and the five measured before: no torn line
    proc = subprocess.run([sys.executable, "-c", SWEEP.format(root=str(ROOT), at=-1, out=str(out))], timeout=60,
                          check=False)
    assert proc.returncode == 0
    assert len(out.read_text().splitlines()) == 1 + 3 * N_CONFIGS  # three interleaved rounds per config


# -- PostgreSQL stopped and started again mid-study, on a private server --------------------------------------------

def _pg_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: [int(x) for x in
                                                                                      p.parts[-3].split(".")])
    return found[-1].parent if found else None


@contextlib.contextmanager
def private_postgres():
    """A throwaway PostgreSQL cluster on a free loopback port (the CI server is shared, so it is not the one
    stopped): yields (url, stop, start). Run as the postgres user when the tests run as root."""
    pg_bin = _pg_bin()
    if pg_bin is None:
        pytest.skip("PostgreSQL server binaries not installed (.ci/run installs them)")
    as_pg = ["runuser", "-u", "postgres", "--"] if os.getuid() == 0 else []
    base = Path(tempfile.mkdtemp(prefix="mla-tune-pg-", dir="/var/tmp"))
    try:
        if as_pg:
            shutil.chown(base, "postgres")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        subprocess.run([*as_pg, str(pg_bin / "initdb"), "-D", str(base / "data"), "-U", "postgres",
                        "--auth=trust", "-N"], check=True, capture_output=True)
        opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {base} -c fsync=off"

        def ctl(*args: str) -> None:
            subprocess.run([*as_pg, str(pg_bin / "pg_ctl"), "-D", str(base / "data"), "-l", str(base / "log"),
                            "-w", "-o", opts, *args], check=True, capture_output=True)

        ctl("start")
        try:
            yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres", lambda: ctl("stop", "-m", "fast"), \
                lambda: ctl("start")
        finally:
            with contextlib.suppress(subprocess.CalledProcessError):
                ctl("stop", "-m", "immediate")
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.postgres
def test_postgresql_stopped_mid_study_is_one_line_and_the_rerun_after_restart_finishes(tmp_path):
    with private_postgres() as (url, stop, start):
        table = tmp_path / "t.yaml"
        open_storage(parse_storage(url), create=True)
        proc = study_cli(url, table, tmp_path, delay=0.1)
        kept = complete(wait_for(url, lambda ts: len(complete(ts)) >= 3 and measuring(ts)))
        stop()
        _, err = proc.communicate(timeout=60)
        assert proc.returncode != 0
        assert "failed mid-study" in one_line_error(err) and not table.exists()
        start()
        proc = study_cli(url, table, tmp_path)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert_recovered(url, table, kept)
