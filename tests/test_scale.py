"""Several worker processes on one study: sharing, SIGKILL mid-trial, Ctrl-C, busy GPUs, unsafe storages.

Real processes, real signals, real storages (a journal file; PostgreSQL at $MLA_TUNE_TEST_POSTGRES), and the
replay runner on a sweep recorded here from the fake runner (``MLA_TUNE_REPLAY_DELAY_S`` keeps a trial in flight
long enough to be killed). Heartbeats are made short (``MLA_TUNE_HEARTBEAT_S``) so a dead worker is noticed fast.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
import warnings

import optuna
import pytest
from optuna.trial import TrialState
from typer.testing import CliRunner

from mla_tune import api
from mla_tune.cli import app
from mla_tune.coordination import gpu_lock
from mla_tune.coordination.claim import CLAIM_ATTR, measured_by
from mla_tune.coordination.heartbeat import BEAT_ATTR, HeartbeatJournalStorage, retry_callback
from mla_tune.errors import UsageError
from mla_tune.runners import register_runner
from mla_tune.storage.urls import open_storage, parse_storage
from mla_tune.study.sampling import recorded_status

from .fakes import FakeRunner

BACKEND, SPEC = "FLASH_ATTN_MLA", "64q1s1k"
STUDY = f"Fake100-replay/deepseek-v3-tp1/{BACKEND}/{SPEC}"
PG = os.environ.get("MLA_TUNE_TEST_POSTGRES")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    d = tmp_path_factory.mktemp("sweep")
    for backend in (BACKEND, "TRITON_MLA"):
        api.run_sweep(backend=backend, workload="decode_1k", output=d / f"{backend}.jsonl",
                      runner=FakeRunner(optimum={"max_num_splits": 8, "num_kv_splits": 4}))
    return f"replay:{d}"


@pytest.fixture(autouse=True)
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("MLA_TUNE_LOCK_DIR", str(tmp_path / "locks"))
    monkeypatch.setenv("MLA_TUNE_HEARTBEAT_S", "0.5")  # a dead worker's trial is stale after 1.5 s
    monkeypatch.delenv("MLA_TUNE_REPLAY_DELAY_S", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


@pytest.fixture(params=["journal", pytest.param("postgres", marks=pytest.mark.postgres)])
def storage(request, tmp_path):
    if request.param == "journal":
        return str(tmp_path / "studies.journal")
    store = open_storage(parse_storage(PG), create=True)
    for s in optuna.get_all_study_summaries(store, include_best_trial=False):  # a fresh test database
        optuna.delete_study(study_name=s.study_name, storage=store)
    return PG


def n_configs(sweep, backend=BACKEND, workload=f"spec:{SPEC}"):
    """Distinct configs per study of ``workload`` (what an exhaustive study measures)."""
    from mla_tune.runners import make_runner
    from mla_tune.study.trials import check_space_available
    from mla_tune.study.plan import plan

    runner = make_runner(sweep)
    request, space = api.build_request(backend=backend, workload=workload)
    space, _ = check_space_available(space, runner)
    return {len(t.enumerate()[1]) for t in plan(request, runner.environment(), space)}.pop()


def load(storage, name=STUDY):
    return optuna.load_study(study_name=name, storage=open_storage(parse_storage(storage), create=False)).trials


def assert_accounted(trials, n_keys):
    """Every config measured exactly once; nothing left running or queued."""
    fresh = [t for t in trials if recorded_status(t) and "duplicate_of" not in t.user_attrs]
    keys = [t.user_attrs["key"] for t in fresh]
    assert len(keys) == len(set(keys)) == n_keys
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    return fresh


@pytest.mark.slow
def test_workers_share_every_study_and_measure_each_config_once(sweep, storage, monkeypatch):
    monkeypatch.setenv("MLA_TUNE_REPLAY_DELAY_S", "0.08")  # 48 measurements: ~4 s of work to share
    par = api.run_study_parallel(gpus="0,1,2", backend="TRITON_MLA", workload="decode_1k", runner=sweep,
                                 storage=storage, confirm_top=1, confirm_rounds=2)
    assert not par.failed and len(par.outcome.summaries) == 6
    n = n_configs(sweep, "TRITON_MLA", "decode_1k")
    workers = set()
    for s in par.outcome.summaries:
        assert s.measured == n and s.confirmation is not None
        fresh = assert_accounted(load(storage, s.name), n)
        workers |= {measured_by(t) for t in fresh}
    # The work was shared (on a loaded 2-core CI box a late-starting worker may find little left, so not "all 3"),
    # and each worker measured on its own CUDA_VISIBLE_DEVICES only.
    pids = {w.split(":")[1] for w in workers}
    assert len(pids) >= 2 and pids <= {str(w.pid) for w in par.workers} and len(workers) == len(pids)
    gpu_of = {w.split(":")[1]: w.rsplit(":", 1)[1] for w in workers}
    assert len(gpu_of) == len(set(gpu_of.values())) == len(pids) and set(gpu_of.values()) <= {"0", "1", "2"}


def _worker_pids(tmp_path):
    """The PIDs in the GPU lock files: the workers measuring there."""
    return [int(p.read_text()) for p in (tmp_path / "locks").glob("mla-tune-gpu-*.lock")]


def _measuring(storage, gpu=None, deadline_s=20):
    """Wait for a trial being measured now (by the worker on ``gpu``); returns (trial number, worker pid).

    Only a trial that has not yet recorded its measurement counts, so a kill right after lands mid-measurement
    (or, on a slow machine, in the short window before the value is stored: a case the product handles too)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            trials = load(storage)
        except Exception:  # not created yet
            trials = []
        for t in trials:
            host_pid_gpu = (t.system_attrs.get(CLAIM_ATTR) or {}).get("worker", "").split(":")
            if (t.state == TrialState.RUNNING and "status" not in t.user_attrs and len(host_pid_gpu) == 3
                    and gpu in (None, host_pid_gpu[2])):
                return t.number, int(host_pid_gpu[1])
        time.sleep(0.01)
    raise AssertionError("no trial started measuring")


@pytest.mark.slow
def test_sigkill_mid_trial_is_failed_retried_once_and_nothing_is_lost(sweep, storage, tmp_path, monkeypatch):
    monkeypatch.setenv("MLA_TUNE_REPLAY_DELAY_S", "0.15")
    done = {}
    launcher = threading.Thread(target=lambda: done.setdefault("par", api.run_study_parallel(
        gpus="0,1", backend=BACKEND, workload=f"spec:{SPEC}", runner=sweep, storage=storage, confirm_top=1,
        confirm_rounds=2)))
    launcher.start()
    try:
        killed, victim = _measuring(storage, gpu="1")
        os.kill(victim, signal.SIGKILL)  # mid-trial: each measurement takes 0.15 s
    finally:
        launcher.join(60)
    par = done["par"]
    [w0, w1] = par.workers
    assert w0.error is None and w1.error == "killed by SIGKILL" and w1.exit_code == -signal.SIGKILL
    trials = load(storage)
    dead = trials[killed]
    assert dead.state == TrialState.FAIL and recorded_status(dead) is None  # failed by heartbeat, holds no result
    [retry] = [t for t in trials if t.system_attrs.get("failed_trial") == killed]
    assert retry.state.is_finished() and "status" in retry.user_attrs  # retried once
    fresh = assert_accounted(trials, n_configs(sweep))
    [measured] = [t for t in fresh if t.user_attrs["key"] == dead.user_attrs["key"]]
    assert measured_by(measured).split(":")[1] == str(w0.pid)  # by the survivor (maybe as the retry)
    assert par.outcome.summaries[0].measured == n_configs(sweep) and par.outcome.summaries[0].confirmation is not None


def _cli(*args, env=None):
    return subprocess.Popen([sys.executable, "-m", "mla_tune.cli", "study", "--backend", BACKEND, "--workload",
                             f"spec:{SPEC}", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)


@pytest.mark.slow
def test_ctrl_c_on_the_launcher_stops_every_worker_and_the_same_command_resumes(sweep, tmp_path, monkeypatch):
    storage = str(tmp_path / "s.journal")
    args = ("--runner", sweep, "--storage", storage, "--gpus", "0,1")
    proc = _cli(*args, env=dict(os.environ, MLA_TUNE_REPLAY_DELAY_S="0.3"))
    _measuring(storage)
    workers = _worker_pids(tmp_path)
    assert len(workers) == 2
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "interrupted; finished trials are kept" in err
    for pid in workers:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    trials = load(storage)
    assert trials and not [t for t in trials if t.state == TrialState.RUNNING]  # current trials recorded as failed
    before = {t.user_attrs["key"] for t in trials if "status" in t.user_attrs}
    proc = _cli(*args)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    trials = load(storage)
    assert_accounted(trials, n_configs(sweep))
    assert before <= {t.user_attrs["key"] for t in trials if "status" in t.user_attrs}


def test_a_timeout_in_workers_confirms_nothing_unmeasured_and_leaves_nothing_queued(sweep, tmp_path):
    storage = str(tmp_path / "s.journal")
    par = api.run_study_parallel(gpus="0,1", backend=BACKEND, workload=f"spec:{SPEC}", runner=sweep,
                                 storage=storage, timeout_s=1e-9)
    assert [w.exit_code for w in par.workers] == [1, 1]
    assert all("ran out before measuring vLLM's default, so nothing can be confirmed" in w.error
               for w in par.workers)
    trials = load(storage)
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    study = optuna.load_study(study_name=STUDY, storage=open_storage(parse_storage(storage), create=False))
    assert "confirmation" not in study.user_attrs


def test_a_busy_gpu_is_refused_naming_the_holder(sweep, tmp_path):
    held = gpu_lock.acquire("1")
    try:
        res = CliRunner().invoke(app, ["study", "--backend", BACKEND, "--workload", f"spec:{SPEC}", "--runner",
                                       sweep, "--storage", str(tmp_path / "s.journal"), "--gpus", "0,1"])
    finally:
        held.release()
    assert res.exit_code == 1
    assert f"GPU 1 is busy: mla-tune process {os.getpid()} is measuring on it" in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "s.journal").exists()  # nothing started, nothing written
    gpu_lock.acquire("0").release()  # the lock taken before the refusal was given back


def test_several_workers_refuse_sqlite_and_bad_gpu_lists(sweep, tmp_path):
    with pytest.raises(UsageError, match="SQLite fails under concurrent writers.*journal file.*postgresql://"):
        api.run_study_parallel(gpus="0,1", backend=BACKEND, workload=f"spec:{SPEC}", runner=sweep,
                               storage=f"sqlite:///{tmp_path}/s.db")
    assert not (tmp_path / "s.db").exists()
    for bad, why in (("0,0", "twice"), ("", "comma-separated"), ("0,x", "not a GPU index")):
        res = CliRunner().invoke(app, ["study", "--backend", BACKEND, "--workload", f"spec:{SPEC}",
                                       "--runner", sweep, "--gpus", bad])
        assert res.exit_code == 2 and why in res.output


def test_visible_devices_map_gpu_indices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    assert gpu_lock.device_of("1") == "6"
    with pytest.raises(UsageError, match="only 2 GPUs are visible"):
        gpu_lock.device_of("2")


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_journal_heartbeat_fails_a_silent_trial_and_retries_it_once(tmp_path):
    from optuna.storages.journal import JournalFileBackend

    store = HeartbeatJournalStorage(JournalFileBackend(str(tmp_path / "j.journal")), interval_s=0.1, grace_s=0.3,
                                    callback=retry_callback())
    study = optuna.create_study(storage=store)
    trial = study.ask()
    trial.suggest_int("x", 0, 9)
    for k, v in {"role": "baseline", "status": "ok", "median_ms": 1.0, "duplicate_of": 7}.items():
        trial.set_user_attr(k, v)  # written before its worker died: the retry must not look measured
    store.record_heartbeat(trial._trial_id)
    assert BEAT_ATTR in store.get_trial(trial._trial_id).system_attrs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
        assert study.trials[0].state == TrialState.RUNNING  # beating recently: alive
        time.sleep(0.4)
        optuna.storages.fail_stale_trials(study)
        [dead, retry] = study.trials
        assert dead.state == TrialState.FAIL and retry.state == TrialState.WAITING
        assert retry.params == dead.params and retry.system_attrs["failed_trial"] == 0
        assert retry.user_attrs == {"role": "baseline"}  # the dead run's result attrs are not inherited
        popped = study.ask()  # the retry inherits its original's old beat: its start keeps it alive
        assert popped.number == 1
        optuna.storages.fail_stale_trials(study)
        assert study.trials[1].state == TrialState.RUNNING
        time.sleep(0.4)
        optuna.storages.fail_stale_trials(study)  # dies again: failed, not retried a second time
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.FAIL]


def test_claims_are_released_with_the_trial(sweep, tmp_path):
    """A single-process study leaves only finished trials; claims only mark the one that measured."""
    out = api.run_study(backend=BACKEND, workload=f"spec:{SPEC}", runner=sweep, storage=str(tmp_path / "s.journal"),
                        n_trials=5, confirm_rounds=2)
    trials = load(str(tmp_path / "s.journal"), out.summaries[0].name)
    assert all(t.state.is_finished() for t in trials)
    assert sum(CLAIM_ATTR in t.system_attrs for t in trials) == 5


def test_a_crashing_worker_reports_its_error_in_one_line(tmp_path, monkeypatch, capsys):
    """A bug in a worker is named in its result (the launcher's one line), with the traceback on stderr."""
    import json

    from mla_tune.parallel import workers

    def boom(job, progress=None):
        raise RuntimeError("something broke\nsecond line")

    monkeypatch.setattr(workers, "work", boom)
    monkeypatch.setattr(workers, "_watch_parent", lambda: None)
    monkeypatch.setattr(optuna.logging, "set_verbosity", lambda level: None)
    job = workers.WorkerJob(0, 1, "0", str(tmp_path / "s.journal"), "fake", {}, str(tmp_path / "r.json"))
    (tmp_path / "job.json").write_text(json.dumps(dataclasses.asdict(job)))
    try:
        assert workers.main([str(tmp_path / "job.json")]) == 1
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    assert json.loads((tmp_path / "r.json").read_text()) == {
        "ok": False, "error": "crashed: RuntimeError: something broke", "exit_code": 1}
    assert "Traceback" in capsys.readouterr().err


def _finished_study(tmp_path):
    """A finished single-shape study on a journal, with what ``confirm`` needs to run it again."""
    from mla_tune.study.trials import check_space_available
    from mla_tune.study.plan import plan

    runner = FakeRunner(optimum={"max_num_splits": 8})
    storage = str(tmp_path / "s.journal")
    api.run_study(backend=BACKEND, workload=f"spec:{SPEC}", runner=runner, storage=storage, confirm_rounds=2)
    request, space = api.build_request(backend=BACKEND, workload=f"spec:{SPEC}", confirm_rounds=2)
    space, _ = check_space_available(space, runner)
    [target] = plan(request, runner.environment(), space)
    study = optuna.load_study(study_name=target.name, storage=open_storage(parse_storage(storage), create=False))
    return study, target, FakeRunner(optimum={"max_num_splits": 8})


def test_a_confirmation_claimed_by_a_live_worker_is_not_run_twice_and_a_dead_ones_is_taken_over(tmp_path):
    from mla_tune.study.confirm import CONFIRMING_ATTR, confirm

    study, target, runner = _finished_study(tmp_path)
    storage = study._storage
    other = {"worker": "otherhost:123:0", "trials": len(study.trials), "beat": time.time()}
    storage.set_study_system_attr(study._study_id, CONFIRMING_ATTR, other)
    assert confirm(study, target, runner, runner.environment(), force=True, shared=True) is None
    assert runner.calls == []  # no GPU time spent on a confirmation another host is running

    storage.set_study_system_attr(study._study_id, CONFIRMING_ATTR, other | {"beat": time.time() - 2.0})  # > 1.5 s
    result = confirm(study, target, runner, runner.environment(), force=True, shared=True)
    assert result is not None and result["winner"] is not None and runner.calls  # the dead host's claim taken over
    assert storage.get_study_system_attrs(study._study_id)[CONFIRMING_ATTR] is None  # released when done

    stale_count = other | {"trials": 1}  # a claim on an older state of the study does not block a new confirmation
    storage.set_study_system_attr(study._study_id, CONFIRMING_ATTR, stale_count)
    assert confirm(study, target, runner, runner.environment(), force=True, shared=True) is not None


@pytest.mark.slow
def test_two_hosts_on_one_storage_share_studies_and_confirmations(sweep, tmp_path, monkeypatch):
    """Two launches (as on two hosts) on one journal: every study measured once per config and confirmed."""
    monkeypatch.setenv("MLA_TUNE_REPLAY_DELAY_S", "0.03")
    storage = str(tmp_path / "s.journal")
    args = ("--runner", sweep, "--storage", storage)
    hosts = [subprocess.Popen([sys.executable, "-m", "mla_tune.cli", "study", "--backend", "TRITON_MLA", "--workload",
                               "decode_1k", *args, "--gpus", gpus, "--confirm-rounds", "2"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for gpus in ("0", "1")]
    for h in hosts:
        _, err = h.communicate(timeout=120)
        assert h.returncode == 0, err
    from mla_tune.study.confirm import CONFIRMING_ATTR

    store = open_storage(parse_storage(storage), create=False)
    summaries = optuna.get_all_study_summaries(store, include_best_trial=False)
    assert len(summaries) == 6
    n = n_configs(sweep, "TRITON_MLA", "decode_1k")
    for s in summaries:
        study = optuna.load_study(study_name=s.study_name, storage=store)
        assert_accounted(study.trials, n)
        assert study.user_attrs["confirmation"]["trials"] == n  # confirmed after every config was measured
        assert not store.get_study_system_attrs(study._study_id).get(CONFIRMING_ATTR)  # no claim left behind


def test_a_confirmation_taken_over_stops_and_never_replaces_a_newer_one(tmp_path):
    from mla_tune.study.confirm import CONFIRM_KEY, CONFIRMING_ATTR, confirm

    study, target, runner = _finished_study(tmp_path)
    storage, real = study._storage, runner.measure_paired
    other = {"worker": "otherhost:123:0", "trials": 10**6, "beat": time.time()}

    def taken_over_meanwhile(cases):  # another host decided this worker was dead and took the claim
        if not runner.calls:
            storage.set_study_system_attr(study._study_id, CONFIRMING_ATTR, other)
            time.sleep(1.0)  # two beats of this worker's claim thread (MLA_TUNE_HEARTBEAT_S=0.5)
        return real(cases)

    runner.measure_paired = taken_over_meanwhile
    before = study.user_attrs[CONFIRM_KEY]
    assert confirm(study, target, runner, runner.environment(), force=True, shared=True) is None
    assert storage.get_study_user_attrs(study._study_id)[CONFIRM_KEY] == before  # nothing stored by the loser
    assert storage.get_study_system_attrs(study._study_id)[CONFIRMING_ATTR] == other  # the winner's claim stays

    storage.set_study_system_attr(study._study_id, CONFIRMING_ATTR, None)
    newer = before | {"trials": 10**6}
    study.set_user_attr(CONFIRM_KEY, newer)
    runner.measure_paired = real
    assert confirm(study, target, runner, runner.environment(), force=True, shared=True) == newer
    assert storage.get_study_user_attrs(study._study_id)[CONFIRM_KEY] == newer


def test_a_registered_runner_reaches_the_workers_by_its_import_path(tmp_path, monkeypatch):
    """Workers start with the built-in runners only: a registered one is imported there by its factory's path,
    found on the launcher's sys.path (here pytest's rootdir, which is not the workers' working directory)."""
    monkeypatch.chdir(tmp_path)
    register_runner("fake-for-workers", FakeRunner)  # tests.fakes:FakeRunner
    par = api.run_study_parallel(gpus="0,1", backend=BACKEND, workload=f"spec:{SPEC}", runner="fake-for-workers",
                                 storage=str(tmp_path / "s.journal"), n_trials=4, confirm_rounds=2)
    assert not par.failed, par.workers
    [summary] = par.outcome.summaries
    assert summary.measured == 4 and summary.attrs["environment"]["runner"] == "fake"


def test_a_registered_runner_workers_cannot_import_is_refused_in_one_line_before_anything_is_written(tmp_path):
    register_runner("fake-lambda", lambda arg: FakeRunner())
    storage = tmp_path / "s.journal"
    with pytest.raises(UsageError, match="runner fake-lambda cannot be used by --gpus workers") as e:
        api.run_study_parallel(gpus="0", backend=BACKEND, workload=f"spec:{SPEC}", runner="fake-lambda",
                               storage=str(storage))
    assert "register_runner('fake-lambda', 'package.module:function')" in str(e.value)
    r = CliRunner().invoke(app, ["study", "--backend", BACKEND, "--workload", f"spec:{SPEC}", "--runner", "fake-lambda",
                                 "--storage", str(storage), "--gpus", "0"])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    assert not storage.exists()
