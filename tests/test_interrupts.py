"""Signals at safe points only, trials of dead processes recognised at once, and no study confirmed short.

In-process with the fake runner: real signals sent to this process (``os.kill``) at chosen moments, leftovers of
dead processes written into the storage as a killed run leaves them. The same with real processes and real kills
is in ``test_faults_recovery.py``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import optuna
import pytest
from optuna.trial import TrialState

from mla_tune import api
from mla_tune.coordination import interrupts
from mla_tune.coordination.heartbeat import OWNER_ATTR, HeartbeatJournalStorage, process_gone, this_process
from mla_tune.storage.urls import open_storage, parse_storage
from mla_tune.study.confirm import StudyIncompleteError
from mla_tune.study.sampling import KEY_ATTR, recorded_status

from .fakes import FakeRunner

OPT = {"cuda_graphs": True, "max_num_splits": 8, "prefill_backend": "fa3"}
NAME = "Fake100/deepseek-v3-tp1/FLASH_ATTN_MLA/64q1s4k"
N_CONFIGS = 18


@pytest.fixture(autouse=True)
def long_grace(monkeypatch):
    # A grace period of 3 minutes: whatever is recognised here is recognised without waiting for heartbeats.
    monkeypatch.setenv("MLA_TUNE_HEARTBEAT_S", "60")


def run(tmp_path, runner=None, **kw):
    args = {"backend": "FLASH_ATTN_MLA", "workload": "spec:64q1s4k", "storage": str(tmp_path / "s.journal"),
            "runner": runner or FakeRunner(optimum=OPT), "confirm_top": 1, "confirm_rounds": 2}
    return api.run_study(**(args | kw))


def study(tmp_path) -> optuna.Study:
    return optuna.load_study(study_name=NAME, storage=open_storage(parse_storage(str(tmp_path / "s.journal")),
                                                                   create=False))


def assert_settled(trials, n=N_CONFIGS):
    """Every config measured once, nothing left RUNNING or WAITING."""
    assert not [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    keys = [t.user_attrs[KEY_ATTR] for t in trials if recorded_status(t) and "duplicate_of" not in t.user_attrs]
    assert len(keys) == len(set(keys)) == n


def test_ctrl_c_while_optuna_creates_a_trial_waits_for_the_measurement(tmp_path, monkeypatch):
    """A SIGINT inside ``study.ask`` used to leave that trial RUNNING with no params, forever: now it is held until
    the trial's measurement starts, which records the trial as interrupted."""
    real = HeartbeatJournalStorage.create_new_trial

    def ctrl_c_inside_ask(self, study_id, template_trial=None):
        trial_id = real(self, study_id, template_trial)
        if self.get_trial(trial_id).number == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return trial_id

    monkeypatch.setattr(HeartbeatJournalStorage, "create_new_trial", ctrl_c_inside_ask)
    runner = FakeRunner(optimum=OPT)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, runner)
    trials = study(tmp_path).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3 + [TrialState.FAIL]
    assert trials[3].params and "status" not in trials[3].user_attrs  # held to its measurement: interrupted there
    assert len(runner.calls) == 3  # stopped as its measurement was to start
    monkeypatch.setattr(HeartbeatJournalStorage, "create_new_trial", real)
    out = run(tmp_path)
    assert out.summaries[0].measured == N_CONFIGS and out.summaries[0].confirmation is not None
    assert_settled(study(tmp_path).trials)


def test_a_held_signal_raises_at_the_next_safe_point_and_a_second_one_at_once():
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    with interrupts.handled():
        os.kill(os.getpid(), signal.SIGTERM)  # held: no safe point here
        with pytest.raises(KeyboardInterrupt), interrupts.safe_point():
            pass
        os.kill(os.getpid(), signal.SIGINT)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # a process stuck outside safe points can still be stopped
    with pytest.raises(KeyboardInterrupt), interrupts.handled():
        os.kill(os.getpid(), signal.SIGINT)  # after the last safe point: raised when the block ends
    assert {sig: signal.getsignal(sig) for sig in before} == before  # handlers restored

    done = []
    thread = threading.Thread(target=lambda: done.append(interrupts.handled().__enter__()))
    thread.start()
    thread.join()
    assert done == [None] and {sig: signal.getsignal(sig) for sig in before} == before  # off the main thread


def test_timeout_before_anything_ran_confirms_nothing_and_queues_nothing(tmp_path):
    with pytest.raises(StudyIncompleteError, match=r"0 of 18 configs measured; --timeout 1e-09 s ran out before "
                                                   "measuring vLLM's default, so nothing can be confirmed"):
        run(tmp_path, timeout_s=1e-9)
    s = study(tmp_path)
    assert not [t for t in s.trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert "confirmation" not in s.user_attrs
    out = run(tmp_path)  # the same command without the timeout finishes it
    assert out.summaries[0].measured == N_CONFIGS


def test_timeout_mid_study_confirms_what_was_measured(tmp_path):
    runner = FakeRunner(optimum=OPT)
    real = runner.measure_paired

    def slow(cases):
        time.sleep(0.05)
        return real(cases)

    runner.measure_paired = slow
    out = run(tmp_path, runner, timeout_s=0.3)
    [s] = out.summaries
    assert 1 < s.measured < N_CONFIGS and s.confirmation["trials"] == s.measured
    assert not [t for t in study(tmp_path).trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]


def _dead_process() -> dict:
    """``this_process()`` as a process that has exited would have recorded it."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return this_process() | {"pid": child.pid, "start": 1, "trial": "t0"}


def test_process_gone_knows_a_dead_pid_a_reused_one_a_zombie_and_leaves_other_hosts_to_heartbeats():
    me = this_process()
    assert me["pid"] == os.getpid() and me["host"] and (me["start"] is not None or not os.path.isdir("/proc"))
    assert process_gone(_dead_process())
    assert not process_gone(me | {"pid": os.getppid(), "start": None})  # alive (start unknown: pid alone)
    if os.path.isdir("/proc"):
        assert process_gone(me | {"pid": os.getppid(), "start": -1})  # the pid is another process now
        zombie = subprocess.Popen([sys.executable, "-c", "pass"])
        time.sleep(0.5)  # exited, not waited for: a zombie
        assert process_gone(me | {"pid": zombie.pid, "start": None})
        zombie.wait()
    assert not process_gone(_dead_process() | {"host": "another-host"})  # not ours to judge: heartbeat rule
    assert not process_gone(_dead_process() | {"boot": "another-boot"})
    assert process_gone(me | {"trial": "not-the-current-one"})  # this process, a trial it no longer runs
    assert not process_gone(None) and not process_gone({"pid": "x"})


KILLED_RUN = """
import os, signal, sys
sys.path.insert(0, {root!r})
from mla_tune import api
from tests.fakes import FakeRunner

class Dies(FakeRunner):
    def on_measure(self):
        if self.events == {at} + 1:
            os.kill(os.getpid(), signal.SIGKILL)  # kill -9 mid-trial

api.run_study(backend="FLASH_ATTN_MLA", workload="spec:64q1s4k", storage={storage!r}, runner=Dies(optimum={opt!r}))
"""


def test_a_trial_left_running_by_a_killed_process_is_measured_again_at_once(tmp_path):
    """kill -9 mid-trial leaves the trial RUNNING. The exhaustive sampler used to count it as visited, so the
    re-run finished, confirmed and exported with that config never measured (until the grace period, if ever)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = KILLED_RUN.format(root=root, at=6, storage=str(tmp_path / "s.journal"), opt=OPT)
    proc = subprocess.Popen([sys.executable, "-c", code])
    assert proc.wait(timeout=60) == -signal.SIGKILL
    [left] = [t for t in study(tmp_path).trials if t.state == TrialState.RUNNING]
    assert left.system_attrs[OWNER_ATTR]["pid"] == proc.pid
    started = time.monotonic()
    out = run(tmp_path)
    assert time.monotonic() - started < 20  # not the 3-minute grace period
    trials = study(tmp_path).trials
    assert trials[left.number].state == TrialState.FAIL
    assert out.summaries[0].measured == N_CONFIGS and out.summaries[0].confirmation["trials"] == N_CONFIGS
    assert_settled(trials)


@pytest.mark.parametrize("where", ["this host, then killed", "another host, then silent"])
def test_a_config_another_process_still_measures_is_waited_for_before_confirming(tmp_path, monkeypatch, where):
    """Two processes on one study (a user started it twice): the one that finishes its walk first used to confirm
    with the other's last config unmeasured. Now it waits for that trial, and measures the config itself when the
    other process dies (at once on this host; after the heartbeat grace period elsewhere)."""
    other_host = where.startswith("another")
    if other_host:
        monkeypatch.setenv("MLA_TUNE_HEARTBEAT_S", "0.3")
    run(tmp_path / "ref")  # the same study elsewhere, to know a config and its params
    ref = optuna.load_study(study_name=NAME, storage=open_storage(parse_storage(str(tmp_path / "ref" / "s.journal")),
                                                                   create=False))
    last = ref.trials[-1]
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        store = open_storage(parse_storage(str(tmp_path / "s.journal")), create=True)
        s = optuna.create_study(study_name=NAME, storage=store)
        s.enqueue_trial(last.params)
        [mid] = s.get_trials(states=(TrialState.WAITING,))
        assert store.set_trial_state_values(mid._trial_id, TrialState.RUNNING)  # the other process's trial
        owner = this_process() | {"pid": other.pid, "start": _start_of(other.pid), "trial": "t"}
        store.set_trial_system_attr(mid._trial_id, OWNER_ATTR, owner | ({"host": "elsewhere"} if other_host else {}))
        store.set_trial_system_attr(mid._trial_id, "mla_tune:claim", {"key": last.user_attrs[KEY_ATTR],
                                                                      "worker": f"x:{other.pid}:"})
        store.set_trial_user_attr(mid._trial_id, KEY_ATTR, last.user_attrs[KEY_ATTR])
        threading.Timer(1.5, other.kill).start()
        seen = []
        out = run(tmp_path, progress=seen.append)
    finally:
        other.kill()
        other.wait()
    [summary] = out.summaries
    assert summary.measured == N_CONFIGS and summary.confirmation["trials"] == N_CONFIGS
    assert any("waiting for trial 0 still running in" in p.message for p in seen)
    trials = study(tmp_path).trials
    assert trials[0].state == TrialState.FAIL
    assert_settled(trials)


def _start_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except OSError:
        return None


def test_a_baseline_left_running_with_no_params_by_an_old_run_is_cleared(tmp_path, monkeypatch):
    """What Ctrl-C inside ``study.ask`` used to leave: the queued baseline popped (RUNNING) and nothing else, not
    even an owner. Once it is older than the grace period the next run fails it, even on a finished study."""
    monkeypatch.setenv("MLA_TUNE_HEARTBEAT_S", "0.1")
    run(tmp_path)
    s = study(tmp_path)
    s.enqueue_trial(s.trials[0].params, user_attrs={"role": "baseline"})
    [waiting] = s.get_trials(states=(TrialState.WAITING,))
    assert s._storage.set_trial_state_values(waiting._trial_id, TrialState.RUNNING)
    time.sleep(0.4)
    out = run(tmp_path)
    trials = study(tmp_path).trials
    assert trials[waiting.number].state == TrialState.FAIL
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert out.summaries[0].measured == N_CONFIGS


def test_a_trial_failed_by_another_worker_before_it_started_here_is_measured_again(tmp_path, monkeypatch, caplog):
    """This process stalled past the grace period right after creating a trial: another worker failed it. The
    owner stamp meets a finished trial; the study goes on and the config is measured by a later trial."""
    real = HeartbeatJournalStorage.create_new_trial

    def failed_at_once(self, study_id, template_trial=None):
        trial_id = real(self, study_id, template_trial)
        if self.get_trial(trial_id).number == 2:
            self.set_trial_state_values(trial_id, TrialState.FAIL)
        return trial_id

    monkeypatch.setattr(HeartbeatJournalStorage, "create_new_trial", failed_at_once)
    out = run(tmp_path)
    assert out.summaries[0].measured == N_CONFIGS
    trials = study(tmp_path).trials
    assert trials[2].state == TrialState.FAIL and OWNER_ATTR not in trials[2].system_attrs
    assert "trial 2 was failed as stale by another worker" in caplog.text


def test_every_trial_records_the_process_that_ran_it(tmp_path):
    run(tmp_path, n_trials=3)
    for t in study(tmp_path).trials:
        owner = t.system_attrs[OWNER_ATTR]
        assert {k: owner[k] for k in ("host", "pid", "start")} == {k: this_process()[k] for k in ("host", "pid",
                                                                                                   "start")}


def test_a_table_is_not_exported_from_a_study_measured_further_since_its_confirmation(tmp_path):
    run(tmp_path, n_trials=5)
    s = study(tmp_path)
    s.set_user_attr("confirmation", s.user_attrs["confirmation"] | {"trials": 4})  # then a 5th was measured
    with pytest.raises(StudyIncompleteError, match="5 configs measured, but confirmed when 4 were"):
        api.export_table(tmp_path / "t.yaml", storage=str(tmp_path / "s.journal"), backend="FLASH_ATTN_MLA")
    assert not (tmp_path / "t.yaml").exists()
