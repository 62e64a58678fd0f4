"""Studies end to end on CPU with the fake runner: find the planted optimum, confirm it, resume, survive Ctrl-C."""

from __future__ import annotations

import json

import optuna
import pytest
from optuna.trial import TrialState

from mla_tune import api
from mla_tune.tables.export import load_table

from .fakes import FakeRunner, TwoBuildsRunner

OPT = {"cuda_graphs": True, "max_num_splits": 8, "prefill_backend": "fa3"}


def run(tmp_path, runner, **kw):
    args = dict(backend="FLASH_ATTN_MLA", workload="spec:64q1s4k", storage=str(tmp_path / "s.journal"),
                runner=runner, confirm_rounds=4)
    args.update(kw)
    return api.run_study(**args)


def trials(tmp_path, name):
    storage = api.parse_storage(str(tmp_path / "s.journal"))
    from mla_tune.storage.urls import open_storage

    return optuna.load_study(study_name=name, storage=open_storage(storage, create=False)).trials


def test_exhaustive_study_finds_confirms_and_exports_the_optimum(tmp_path):
    runner = FakeRunner(optimum=OPT)
    out = run(tmp_path, runner)
    [s] = out.summaries
    assert s.name == "Fake100/deepseek-v3-tp1/FLASH_ATTN_MLA/64q1s4k"
    assert s.measured == 18  # auto, fa3: 1 eager + 7 split caps; fa2: eager or graph (no cap)
    assert s.best_attrs["config"] | OPT == s.best_attrs["config"]
    conf = s.confirmation
    assert conf["winner"] is not None
    win = conf["candidates"][conf["winner"]]
    assert win["speedup"] == pytest.approx(1.25, rel=0.03) and win["ci"][0] > 1
    assert set(out.excluded) == {"fa4", "flashinfer", "cudnn", "trtllm"}
    path, table = api.export_table(tmp_path / "t.yaml", storage=str(tmp_path / "s.journal"),
                                   backend="FLASH_ATTN_MLA")
    [entry] = load_table(path)["entries"]
    assert entry["tuned"] is True and entry["params"] | OPT == entry["params"]
    assert entry["default_params"]["max_num_splits"] == 32 and entry["speedup"] > 1.2


def test_baseline_is_the_first_trial_and_each_config_is_measured_once(tmp_path):
    runner = FakeRunner(optimum=OPT)
    run(tmp_path, runner, n_trials=40)
    ts = trials(tmp_path, "Fake100/deepseek-v3-tp1/FLASH_ATTN_MLA/64q1s4k")
    assert ts[0].user_attrs["role"] == "baseline"
    assert ts[0].user_attrs["config"] == {"cuda_graphs": True, "max_num_splits": 32, "prefill_backend": "auto",
                                          "reorder_batch_threshold": 512}
    keys = [t.user_attrs["key"] for t in ts if "duplicate_of" not in t.user_attrs]
    assert len(keys) == len(set(keys)) == 18
    study_cases = runner.calls[:18]
    assert len({c.params for c in study_cases}) == 18


def test_rerun_resumes_without_repeating_trials(tmp_path):
    first = FakeRunner(optimum=OPT)
    run(tmp_path, first, n_trials=6)
    second = FakeRunner(optimum=OPT)
    out = run(tmp_path, second, n_trials=10)
    assert out.summaries[0].measured == 10
    measured_before = {c.params for c in first.calls[:6]}
    new = second.calls[:4]
    assert len(new) == 4 and not measured_before & {c.params for c in new}


def test_ctrl_c_keeps_finished_trials_and_resume_completes(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, FakeRunner(optimum=OPT, interrupt_after=4))
    ts = trials(tmp_path, "Fake100/deepseek-v3-tp1/FLASH_ATTN_MLA/64q1s4k")
    assert sum(t.state == TrialState.COMPLETE for t in ts) == 3
    assert not [t for t in ts if t.state == TrialState.RUNNING]
    runner = FakeRunner(optimum=OPT)
    out = run(tmp_path, runner)
    assert out.summaries[0].measured == 18
    assert out.summaries[0].confirmation["winner"] is not None


def test_failures_are_kept_as_data(tmp_path):
    runner = FakeRunner(optimum=OPT, fail={"prefill_backend": "fa3", "cuda_graphs": False})
    out = run(tmp_path, runner)
    ts = trials(tmp_path, out.summaries[0].name)
    failed = [t for t in ts if t.state == TrialState.FAIL]
    assert len(failed) == 1 and failed[0].user_attrs["status"] == "error"
    assert "planted failure" in failed[0].user_attrs["message"]
    assert out.summaries[0].failed == 1


def test_a_space_larger_than_the_budget_is_walked_up_to_the_budget(tmp_path):
    runner = FakeRunner(optimum={"num_kv_splits": 16})
    out = run(tmp_path, runner, backend="TRITON_MLA", workload="spec:q2ks8k_32q1s4k", n_trials=10)
    [s] = out.summaries
    assert s.measured == 10  # 24 configs, a budget of 10 distinct measurements: the local walk, cut short


def test_a_new_study_tries_the_nearest_finished_shapes_optimum_first(tmp_path):
    """64q1s4k is tuned; 128q1s4k in the same storage starts from 64q1s4k's optimum, then vLLM's default. A study
    with nothing near it (other backend), or whose neighbour kept the default, starts from the default."""
    run(tmp_path, FakeRunner(optimum=OPT), n_trials=18)
    out = run(tmp_path, FakeRunner(optimum=OPT), workload="spec:128q1s4k", n_trials=3)
    ts = trials(tmp_path, out.summaries[0].name)
    assert ts[0].user_attrs["config"] | OPT == ts[0].user_attrs["config"] and "role" not in ts[0].user_attrs
    assert ts[1].user_attrs["role"] == "baseline"
    assert ts[0].value < ts[1].value and ts[0].user_attrs["speedup_vs_default"] == pytest.approx(1.25, rel=0.02)
    out = run(tmp_path, FakeRunner(optimum={"num_kv_splits": 4}), backend="TRITON_MLA", workload="spec:128q1s4k",
              n_trials=3)
    assert trials(tmp_path, out.summaries[0].name)[0].user_attrs["role"] == "baseline"

    flat = FakeRunner(noise=0.0005)
    flat.factor = lambda case: 1.0 - 0.005 * (case.param_dict.get("max_num_splits") == 1)  # 0.5%: noise
    run(tmp_path / "flat", flat, n_trials=18, confirm_rounds=2)
    out = run(tmp_path / "flat", flat, workload="spec:128q1s4k", n_trials=2, confirm_rounds=2)
    assert trials(tmp_path / "flat", out.summaries[0].name)[0].user_attrs["role"] == "baseline"


def test_a_resumed_study_is_not_warm_started_again(tmp_path):
    run(tmp_path, FakeRunner(optimum=OPT), n_trials=18)
    run(tmp_path, FakeRunner(optimum=OPT), workload="spec:128q1s4k", n_trials=2)
    out = run(tmp_path, FakeRunner(optimum=OPT), workload="spec:128q1s4k", n_trials=4)
    ts = trials(tmp_path, out.summaries[0].name)
    assert [t.user_attrs.get("role") for t in ts].count("baseline") == 1
    assert len({t.user_attrs["key"] for t in ts}) == len(ts) == 4


def test_mix_objective_is_one_study_over_weighted_shapes(tmp_path):
    runner = FakeRunner(optimum={"prefill_backend": "fa2"})
    out = run(tmp_path, runner, backend="FLASHMLA", workload="mixed", objective="mix", n_trials=8)
    [s] = out.summaries
    assert s.name.endswith("/mix:mixed")
    best = s.best_attrs
    assert set(best["shapes"]) == {"q2ks8k_32q1s4k", "q1ks4k_64q1s4k", "2q512s2k_16q1s2k"}
    # the value is the mix's latency relative to vLLM's default: each shape's time beside the default in its own
    # recording, weighted (q1ks4k_64q1s4k weighs 2), over the default's weighted time
    weights = (("q2ks8k_32q1s4k", 1), ("q1ks4k_64q1s4k", 2), ("2q512s2k_16q1s2k", 1))
    pairs = {spec: best["shapes"][spec]["paired"] for spec, _ in weights}
    mix = sum(w * pairs[spec]["reference_ms"] / pairs[spec]["speedup"] for spec, w in weights) / \
        sum(w * pairs[spec]["reference_ms"] for spec, w in weights)
    assert s.best_value == pytest.approx(mix, rel=1e-4) and s.best_value == pytest.approx(0.8, rel=0.02)


def test_noise_only_gain_keeps_the_default(tmp_path):
    runner = FakeRunner(noise=0.01)
    runner.factor = lambda case: 1.0  # every config the same: any "gain" is noise
    out = run(tmp_path, runner)
    conf = out.summaries[0].confirmation
    assert conf["winner"] is None
    _, table = api.export_table(tmp_path / "t.yaml", storage=str(tmp_path / "s.journal"), backend="FLASH_ATTN_MLA")
    [entry] = table["entries"]
    assert entry["tuned"] is False and "not distinguishable from noise" in entry["note"]
    assert entry["params"] == entry["default_params"]


def test_trial_attrs_carry_provenance_and_stats(tmp_path):
    run(tmp_path, FakeRunner(optimum=OPT), n_trials=3)
    t = trials(tmp_path, "Fake100/deepseek-v3-tp1/FLASH_ATTN_MLA/64q1s4k")[1]
    for key in ("median_ms", "spread", "n_samples", "samples_ms", "provenance", "config", "status"):
        assert key in t.user_attrs
    assert t.user_attrs["provenance"]["gpu"]["name"] == "NVIDIA Fake100 80GB"
    assert "speedup_vs_default" in t.user_attrs
    json.dumps(t.user_attrs)


def test_a_gpu_measured_on_by_another_process_is_refused(tmp_path, monkeypatch):
    from mla_tune.coordination.gpu_lock import GpuBusyError, acquire

    monkeypatch.setenv("MLA_TUNE_LOCK_DIR", str(tmp_path / "locks"))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    held = acquire("0")  # as a --gpus worker on the same GPU would
    try:
        runner = FakeRunner(optimum=OPT)
        runner.gpu = "0"
        with pytest.raises(GpuBusyError, match="GPU 0 is busy"):
            run(tmp_path, runner)
        assert not runner.calls and not (tmp_path / "s.journal").exists()
    finally:
        held.release()
    runner = FakeRunner(optimum=OPT)
    runner.gpu = "0"
    out = run(tmp_path, runner, n_trials=2)  # free again: measured, and the lock is released afterwards
    assert out.summaries[0].measured == 2
    acquire("0").release()



def after_attr(monkeypatch, key: str, number: int, then) -> object:
    """Call ``then(trial)`` right after trial ``number``'s attr ``key`` is stored (the objective writes a result's attrs
    in one batch: ``set_user_attrs``); returns the real writer."""
    from mla_tune.study import objective

    real = objective.set_user_attrs

    def hooked(trial, attrs):
        real(trial, attrs)
        if key in attrs and trial.number == number:
            then(trial)

    monkeypatch.setattr(objective, "set_user_attrs", hooked)
    return real


def test_a_trial_killed_after_recording_its_measurement_is_measured_again_not_reused_as_failed(tmp_path,
                                                                                                 monkeypatch):
    """The worker dies in the window after writing an ok measurement and before Optuna stores its value: the trial
    ends FAIL with ``status: ok``. Resuming must measure that config again, not reuse it as "failed before"."""
    from mla_tune.study import objective

    def die(trial):
        raise KeyboardInterrupt

    real = after_attr(monkeypatch, "speedup_vs_default", 2, die)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, FakeRunner(optimum=OPT))
    monkeypatch.setattr(objective, "set_user_attrs", real)
    name = "Fake100/deepseek-v3-tp1/FLASH_ATTN_MLA/64q1s4k"
    [dead] = [t for t in trials(tmp_path, name) if t.number == 2]
    assert dead.state == TrialState.FAIL and dead.user_attrs["status"] == "ok"
    runner = FakeRunner(optimum=OPT)
    out = run(tmp_path, runner)
    assert out.summaries[0].measured == 18 and out.summaries[0].failed == 0
    again = [t for t in trials(tmp_path, name) if t.user_attrs.get("key") == dead.user_attrs["key"] and t.number != 2]
    assert [t.state for t in again] == [TrialState.COMPLETE] and "duplicate_of" not in again[0].user_attrs
    assert json.loads(dead.user_attrs["key"])[0] in [dict(c.params) for c in runner.calls]


def test_a_trial_failed_as_stale_while_it_ran_here_is_measured_again_and_the_study_goes_on(tmp_path, monkeypatch,
                                                                                           caplog):
    """Late heartbeats (an overloaded host) let another worker fail this worker's running trial; Optuna then
    refuses to store its value. The study must go on, and the config be measured again."""
    def failed_by_another_worker(trial):  # once its measurement is stored, nothing more can be written
        trial.study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)

    after_attr(monkeypatch, "status", 2, failed_by_another_worker)
    seen = []
    out = run(tmp_path, FakeRunner(optimum=OPT), progress=seen.append)
    [s] = out.summaries
    assert s.measured == 18 and s.failed == 0 and s.confirmation["winner"] is not None
    ts = trials(tmp_path, s.name)
    lost = ts[2]
    assert lost.state == TrialState.FAIL and lost.user_attrs["status"] == "ok"
    again = [t for t in ts if t.user_attrs.get("key") == lost.user_attrs["key"] and t.number != 2]
    assert [t.state for t in again] == [TrialState.COMPLETE] and "duplicate_of" not in again[0].user_attrs
    assert any("trial 2 was failed as stale by another worker" in p.message for p in seen)
    assert "trial 2 was failed as stale" in caplog.text


def test_a_trial_another_process_also_ran_and_stored_keeps_its_result_and_the_study_goes_on(tmp_path, monkeypatch,
                                                                                          caplog):
    """On SQLite two processes can both take one queued trial (no row lock): the first stores its result, and
    Optuna refuses the second's tell ("Cannot tell a COMPLETE trial"), as seen when three identical studies start
    at once. The second process must go on, not die."""
    from mla_tune.study.objective import Objective

    real = Objective._evaluate

    def completed_by_another_process(self, trial):
        value = real(self, trial)
        if trial.number == 2:  # the other process measured the same config and stored it first
            trial.study._storage.set_trial_state_values(trial._trial_id, TrialState.COMPLETE, values=[value])
        return value

    monkeypatch.setattr(Objective, "_evaluate", completed_by_another_process)
    seen = []
    out = run(tmp_path, FakeRunner(optimum=OPT), progress=seen.append)
    [s] = out.summaries
    assert s.measured == 18 and s.failed == 0 and s.confirmation["winner"] is not None
    assert trials(tmp_path, s.name)[2].state == TrialState.COMPLETE
    assert any("trial 2 was also run and stored by another process" in p.message for p in seen)
    assert "trial 2 was also run and stored" in caplog.text


def test_a_retry_queued_after_the_budget_is_met_still_runs_and_costs_nothing(tmp_path):
    """A dead worker's retry can be enqueued (by a stale heartbeat) once the others met the budget: the next run
    must not leave it WAITING in the storage; its config was measured meanwhile, so it is reused."""
    run(tmp_path, FakeRunner(optimum=OPT), n_trials=5)
    name = "Fake100/deepseek-v3-tp1/FLASH_ATTN_MLA/64q1s4k"
    from mla_tune.storage.urls import open_storage

    study = optuna.load_study(study_name=name, storage=open_storage(api.parse_storage(str(tmp_path / "s.journal")),
                                                                     create=False))
    measured = study.trials[4]
    study.enqueue_trial(measured.params, skip_if_exists=False)
    runner = FakeRunner(optimum=OPT)
    out = run(tmp_path, runner, n_trials=5)
    ts = trials(tmp_path, name)
    assert not [t for t in ts if t.state == TrialState.WAITING]
    assert ts[-1].state == TrialState.COMPLETE and ts[-1].user_attrs["duplicate_of"] == 4
    assert out.summaries[0].measured == 5 and len(ts) == 6  # five configs, then the retry
    assert runner.calls == []  # reused, and no new config to confirm: the stored confirmation stands


def test_after_a_lost_trial_a_later_error_and_ctrl_c_still_surface(tmp_path, monkeypatch):
    """Recovering from a trial failed under us must not swallow what comes after it: a bug elsewhere (here in
    the sampler) propagates, and so does Ctrl-C arriving in a trial that was failed under us."""
    from mla_tune.study.sampling import ExhaustiveSampler

    from mla_tune.study import objective

    real_before = ExhaustiveSampler.before_trial

    def failed_by_another_worker(trial):
        trial.study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)

    def broken_sampler(self, study, trial):
        if trial.number == 4:
            raise RuntimeError("sampler bug")
        return real_before(self, study, trial)

    real_attrs = after_attr(monkeypatch, "status", 2, failed_by_another_worker)
    monkeypatch.setattr(ExhaustiveSampler, "before_trial", broken_sampler)
    with pytest.raises(RuntimeError, match="sampler bug"):
        run(tmp_path, FakeRunner(optimum=OPT))

    def interrupted_after_failed_under_us(trial):
        trial.study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        raise KeyboardInterrupt

    monkeypatch.setattr(ExhaustiveSampler, "before_trial", real_before)
    monkeypatch.setattr(objective, "set_user_attrs", real_attrs)
    after_attr(monkeypatch, "status", 1, interrupted_after_failed_under_us)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "second", FakeRunner(optimum=OPT))


def test_a_sampler_that_keeps_proposing_measured_configs_still_measures_the_budget(tmp_path):
    """Random sampling of an 18-config space with a budget of 100 proposes mostly duplicates near the end: the
    study used to stop at its call cap with 16 configs measured, and confirm them as if complete."""
    out = run(tmp_path, FakeRunner(optimum=OPT), sampler="random", n_trials=100, seed=0, confirm_rounds=2)
    [s] = out.summaries
    assert s.measured == 18 and s.confirmation["trials"] == 18
    ts = trials(tmp_path, s.name)
    assert not [t for t in ts if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    queued = [t for t in ts if "mla_tune:enqueued_by" in t.system_attrs and t.user_attrs.get("role") != "baseline"]
    assert queued and all(t.state == TrialState.COMPLETE for t in queued)  # the missing ones, queued directly


def test_a_gain_inside_the_noise_floor_keeps_the_default_and_one_above_it_is_tuned(tmp_path):
    """Two separately built measurements of vLLM's default differ by 1.2% here (``TwoBuildsRunner``): a config 1%
    faster clears 1 but not that floor, so the default is kept, in the study and in its table; 10% faster clears
    both. Without the floor the 1% would have counted."""
    from dataclasses import replace

    from mla_tune.study.verdict import judge_candidates, verdict_of
    from mla_tune.views.render import study_rows

    small = run(tmp_path / "small", TwoBuildsRunner(speedup=1.01, bias=0.012, noise=0.002))
    conf = small.summaries[0].confirmed
    assert conf.floor is not None and conf.floor.speedup == pytest.approx(1.012, abs=0.002)
    assert conf.floor.rounds == 4  # every round recorded the default twice, beside the three candidates
    best = max(conf.candidates, key=lambda c: c.speedup)
    assert best.speedup == pytest.approx(1.01, abs=0.002) and 1 < best.ci[0] <= conf.floor.ci[1]
    assert conf.winner is None and not best.significant and verdict_of(best, conf.floor) == "under floor"
    [row] = study_rows(small.summaries)
    assert row[5].startswith("default kept: x1.01") and row[5].endswith("did not clear the floor")
    assert row[7] == f"x{conf.floor.speedup:.3f} [{conf.floor.ci[0]:.3f}, {conf.floor.ci[1]:.3f}]"
    _, table = api.export_table(tmp_path / "t.yaml", storage=str(tmp_path / "small" / "s.journal"),
                                backend="FLASH_ATTN_MLA")
    assert table["entries"][0]["tuned"] is False
    assert judge_candidates(conf.candidates)[1] is not None  # the floor, not the interval against 1, said no

    large = run(tmp_path / "large", TwoBuildsRunner(speedup=1.10, bias=0.012, noise=0.002))
    conf = large.summaries[0].confirmed
    win = conf.candidates[conf.winner]
    assert win.speedup == pytest.approx(1.10, abs=0.005) and win.ci[0] > conf.floor.ci[1] > 1
    assert study_rows(large.summaries)[0][5].startswith("x1.10")


def test_a_resume_with_nothing_to_do_writes_nothing_to_the_journal(tmp_path):
    run(tmp_path, FakeRunner(optimum=OPT), n_trials=6)
    journal = tmp_path / "s.journal"
    size = journal.stat().st_size
    runner = FakeRunner(optimum=OPT)
    run(tmp_path, runner, n_trials=6)
    assert runner.calls == [] and journal.stat().st_size == size  # no create-study record appended per resume


def test_a_per_shape_study_resumes_under_a_workload_that_weighs_its_shape_differently(tmp_path):
    """A per-shape study's value is its shape's latency: a weight (from a weighted list or `mixed`) changes nothing."""
    run(tmp_path, FakeRunner(optimum=OPT), n_trials=6, workload="spec:64q1s4k@3")
    out = run(tmp_path, FakeRunner(optimum=OPT), n_trials=8, workload="spec:64q1s4k")
    assert out.summaries[0].measured == 8


def test_study_export_writes_the_studies_of_that_call_only(tmp_path):
    """Several workloads in one call export their shapes, not every study of the backend the storage holds."""
    from typer.testing import CliRunner

    from mla_tune.cli import app
    from mla_tune.runners import register_runner

    register_runner("fake-export", lambda arg: FakeRunner(optimum=OPT))
    run(tmp_path, FakeRunner(optimum=OPT), n_trials=4, workload="spec:8q1s4k")  # an earlier study in the storage
    out = tmp_path / "t.yaml"
    result = CliRunner().invoke(app, ["study", "--backend", "FLASH_ATTN_MLA", "--workload", "spec:64q1s4k",
                                      "--workload", "spec:32q1s4k", "--trials", "4", "--confirm-rounds", "2",
                                      "--storage", str(tmp_path / "s.journal"), "--runner", "fake-export",
                                      "--export", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(e["shape"] for e in load_table(out)["entries"]) == ["32q1s4k", "64q1s4k"]


class HostDiesAfter(FakeRunner):
    """Measures ``n`` cases, then nothing can start here any more (as the H200 did after TRITON_MLA's illegal memory
    accesses: every new worker failed "CUDA driver initialization")."""

    def __init__(self, n: int, **kw) -> None:
        super().__init__(**kw)
        self.left = n

    def _gone(self) -> None:
        from mla_tune.errors import RunnerUnavailableError

        if self.left == 0:
            raise RunnerUnavailableError("the GPU cannot be used here: import torch/vllm: CUDA driver "
                                         "initialization failed")
        self.left -= 1

    def measure(self, case):
        self._gone()
        return super().measure(case)

    def measure_paired(self, cases):
        self._gone()
        return super().measure_paired(cases)


def test_a_gpu_that_stops_working_stops_the_study_and_fails_no_config(tmp_path):
    from mla_tune.errors import RunnerUnavailableError
    from mla_tune.study.sampling import recorded_status

    with pytest.raises(RunnerUnavailableError, match="CUDA driver initialization failed"):
        run(tmp_path, HostDiesAfter(5, optimum=OPT))
    ts = trials(tmp_path, "Fake100/deepseek-v3-tp1/FLASH_ATTN_MLA/64q1s4k")
    assert sum(t.state == TrialState.COMPLETE for t in ts) == 5
    assert not [t for t in ts if t.state == TrialState.FAIL and recorded_status(t)]  # no config marked failed
    assert not [t for t in ts if t.state == TrialState.RUNNING]
    out = run(tmp_path, FakeRunner(optimum=OPT))  # the host is back: the study finishes where it stopped
    assert out.summaries[0].measured == 18 and out.summaries[0].failed == 0
    assert out.summaries[0].confirmation["winner"] is not None


class ClockDrift(FakeRunner):
    """Each arm of each recording runs off by up to +-``drift`` of its own (the samples' own jitter stays small):
    noise that pairing cannot cancel, so the floor comes out wide. (A clock common to a recording's arms, as the
    power cap moves it, is ``clock_noise``: pairing cancels it.)"""

    def __init__(self, drift: float, **kw) -> None:
        super().__init__(noise=0.002, arm_jitter=drift, **kw)


def _rounds_of(tmp_path, name="Fake100/deepseek-v3-tp1/FLASH_ATTN_MLA/64q1s4k"):
    storage = api.parse_storage(str(tmp_path / "s.journal"))
    from mla_tune.storage.urls import open_storage

    conf = optuna.load_study(study_name=name, storage=open_storage(storage, create=False)).user_attrs["confirmation"]
    return conf["rounds"], [len(c["round_ms"]["best"]) for c in conf["candidates"] if c["status"] == "ok"], conf


def test_a_wide_noise_floor_gets_more_rounds_and_a_narrow_one_does_not(tmp_path):
    from mla_tune.study.confirm import FLOOR_TARGET

    run(tmp_path / "quiet", FakeRunner(optimum=OPT, noise=0.001), confirm_rounds=6)
    rounds, per_candidate, conf = _rounds_of(tmp_path / "quiet")
    assert rounds == 6 and set(per_candidate) == {6}
    assert (conf["floor"]["ci"][1] - conf["floor"]["ci"][0]) / 2 <= FLOOR_TARGET

    run(tmp_path / "drift", ClockDrift(0.05, optimum=OPT), confirm_rounds=6)
    rounds, per_candidate, conf = _rounds_of(tmp_path / "drift")
    half = (conf["floor"]["ci"][1] - conf["floor"]["ci"][0]) / 2
    assert rounds > 6 and rounds % 2 == 0 and set(per_candidate) == {rounds}  # 2 more at a time, up to 4 x 6 ...
    assert rounds == 24 or half <= FLOOR_TARGET  # ... until the floor is narrow enough
    assert conf["candidates"][conf["winner"]]["configs"][0] | OPT == conf["candidates"][conf["winner"]]["configs"][0]

    run(tmp_path / "capped", ClockDrift(0.05, optimum=OPT), confirm_rounds=6, confirm_max_rounds=6)
    rounds, per_candidate, _ = _rounds_of(tmp_path / "capped")
    assert rounds == 6 and set(per_candidate) == {6}


def test_a_power_capped_clock_cannot_hide_a_five_percent_gain(tmp_path):
    """The paired issue: each recording runs at a clock anywhere in +-5% (the H100 under its power cap), more than
    the 5% gain of the planted optimum. Recorded against vLLM's default sample by sample, the study confirms it with
    an interval within +-0.5% and a floor as narrow; a runner that records configs one after another (``Runner``'s
    own fallback) sees the same GPU and cannot tell."""
    from mla_tune.runners import Runner

    capped = FakeRunner(optimum=OPT, noise=0.003, clock_noise=0.05)
    capped.factor = lambda case: (1 / 1.05 if all(case.param_dict.get(k) == v for k, v in OPT.items()) else
                                  1.0 if case.param_dict == capped.default_of(case) else 1.2)
    conf = run(tmp_path / "paired", capped).summaries[0].confirmed
    win = conf.candidates[conf.winner]
    assert win.configs[0] | OPT == win.configs[0] and win.speedup == pytest.approx(1.05, abs=0.005)
    assert (win.ci[1] - win.ci[0]) / 2 <= 0.005 and (conf.floor.ci[1] - conf.floor.ci[0]) / 2 <= 0.005

    class OneAfterAnother(FakeRunner):
        measure_paired = Runner.measure_paired

    apart = OneAfterAnother(optimum=OPT, noise=0.003, clock_noise=0.05)
    apart.factor = capped.factor
    conf = run(tmp_path / "apart", apart).summaries[0].confirmed
    assert conf.winner is None or (conf.candidates[conf.winner].ci[1] - conf.candidates[conf.winner].ci[0]) / 2 > 0.01


def test_confirm_max_rounds_below_confirm_rounds_is_one_line(tmp_path):
    from typer.testing import CliRunner

    from mla_tune.cli import app

    r = CliRunner().invoke(app, ["study", "--backend", "FLASH_ATTN_MLA", "--workload", "spec:64q1s4k", "--runner",
                                 "replay:results/sweeps/h200", "--confirm-rounds", "6", "--confirm-max-rounds", "4",
                                 "--storage", str(tmp_path / "s.journal")])
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code != 0 and len(lines) == 1 and "--confirm-max-rounds (4) must be at least --confirm-rounds (6)" \
        in lines[0], r.output
    assert not (tmp_path / "s.journal").exists()


class FailsInRound(ClockDrift):
    """Noise that forces extra rounds, and one failed measurement of the planted optimum in its 9th round."""

    def __init__(self, **kw) -> None:
        super().__init__(0.05, **kw)
        self.optimum_runs = 0

    def measure_paired(self, cases):
        if any(all(c.param_dict.get(k) == v for k, v in self.optimum.items()) for c in cases[1:]):
            self.optimum_runs += 1
            if self.optimum_runs == 1 + 9:  # its trial, then 8 rounds pass, then the 9th fails
                self.fail = dict(self.optimum)
                try:
                    return super().measure_paired(cases)
                finally:
                    self.fail = None
        return super().measure_paired(cases)


def test_a_failure_in_the_extra_rounds_judges_every_candidate_on_the_rounds_all_completed(tmp_path):
    run(tmp_path, FailsInRound(optimum=OPT), confirm_rounds=6)
    rounds, per_candidate, conf = _rounds_of(tmp_path)
    assert rounds == 8 and set(per_candidate) == {8}  # 6, then 8, then the step to 10 is dropped for all of them
    win = conf["candidates"][conf["winner"]]
    assert win["configs"][0] | OPT == win["configs"][0] and win["status"] == "ok"
    assert "judged on 8 rounds; round 9 failed" in win["message"] and "planted failure" in win["message"]


def test_past_the_studys_timeout_a_wide_floor_gets_no_extra_rounds(tmp_path, monkeypatch):
    from mla_tune.study import confirm as confirm_mod

    monkeypatch.setattr(confirm_mod, "past", lambda deadline: deadline is not None)  # every deadline has passed
    run(tmp_path, ClockDrift(0.05, optimum=OPT), confirm_rounds=6, timeout_s=3600)
    rounds, per_candidate, _ = _rounds_of(tmp_path)
    assert rounds == 6 and set(per_candidate) == {6}


def test_a_budget_too_small_for_the_warm_start_still_measures_vllms_default(tmp_path):
    """A warm start queued ahead of vLLM's default must not take the last place in the budget: the default is what
    every confirmation needs, so one place is kept for it until it is measured."""
    run(tmp_path, FakeRunner(optimum=OPT), n_trials=40)  # 64q1s4k: finds the planted optimum, a neighbour's prior
    out = run(tmp_path, FakeRunner(optimum=OPT), workload="spec:128q1s4k", n_trials=1)
    [s] = out.summaries
    assert s.measured == 1
    ts = trials(tmp_path, s.name)
    measured = [t for t in ts if t.state == TrialState.COMPLETE]
    assert [t.user_attrs.get("role") for t in measured] == ["baseline"]
    assert any(t.state == TrialState.PRUNED for t in ts)  # the warm start, out of budget


def test_confirmation_candidates_are_configs_that_ran_differently():
    """On the H200, auto prefill resolves to fa3: run 3's 64q1s4k spent two of its three candidates on a twin of
    vLLM's default (fa3, cap 32) and on cap 1 twice (auto and fa3). Candidates are told apart by what ran."""
    from mla_tune.records import ShapeResult, TrialResult
    from mla_tune.study.confirm import candidates, ran_as_key
    from mla_tune.study.plan import config_set_key

    def cfg(prefill, cap):
        return {"reorder_batch_threshold": 512, "prefill_backend": prefill, "cuda_graphs": True, "max_num_splits": cap}

    study = optuna.create_study()
    for ms, prefill, resolved, cap in [(0.1391, "auto", "fa3", 32), (0.1349, "fa3", "fa3", 32),
                                       (0.1353, "auto", "fa3", 1), (0.1355, "fa3", "fa3", 1),
                                       (0.1360, "fa2", "fa2", 32), (0.1362, "auto", "fa3", 64),
                                       (0.1370, "fa3", "fa3", 64), (0.1380, "auto", "fa3", 8)]:
        shape = ShapeResult("ok", cfg(prefill, cap), median_ms=ms, details={"prefill": resolved})
        attrs = TrialResult(key=config_set_key([cfg(prefill, cap)]), status="ok", measurement=shape).to_attrs()
        study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=ms, user_attrs=attrs))
    baseline = config_set_key([cfg("auto", 32)])
    picks = candidates(study, baseline, 3)
    assert [(r.measurement.config["prefill_backend"], r.measurement.config["max_num_splits"]) for r in picks] == \
        [("auto", 1), ("fa2", 32), ("auto", 64)]
    assert len({ran_as_key(r) for r in picks}) == 3
    # where nothing says what ran (replayed recordings without details), the configs themselves tell them apart
    bare = optuna.create_study()
    for ms, prefill in [(1.0, "auto"), (0.9, "fa3")]:
        shape = ShapeResult("ok", cfg(prefill, 32), median_ms=ms)
        attrs = TrialResult(key=config_set_key([cfg(prefill, 32)]), status="ok", measurement=shape).to_attrs()
        bare.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=ms, user_attrs=attrs))
    assert [r.measurement.config["prefill_backend"] for r in candidates(bare, baseline, 3)] == ["fa3"]


def test_a_split_count_that_spells_out_what_auto_ran_is_a_twin_of_the_default():
    """TRITON_MLA: vLLM's heuristic ran 8 splits in the baseline, so num_kv_splits=8 is the default again."""
    from mla_tune.records import ShapeResult, TrialResult
    from mla_tune.study.confirm import candidates
    from mla_tune.study.plan import config_set_key

    study = optuna.create_study()
    for ms, splits, ran in [(1.0, "auto", 8), (0.95, 8, 8), (0.97, 4, 4), (0.99, 16, 16)]:
        config = {"prefill_backend": "auto", "num_kv_splits": splits}
        shape = ShapeResult("ok", config, median_ms=ms, details={"prefill": "fa3", "num_kv_splits": str(ran)})
        attrs = TrialResult(key=config_set_key([config]), status="ok", measurement=shape).to_attrs()
        study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=ms, user_attrs=attrs))
    picks = candidates(study, config_set_key([{"prefill_backend": "auto", "num_kv_splits": "auto"}]), 3)
    assert [r.measurement.config["num_kv_splits"] for r in picks] == [4, 16]


def test_a_trial_keeps_its_recordings_clock_readings():
    """The paired issue, item 6: each trial stores what its recording said of the clocks (here the fake runner's
    recording details: its pairing, blocks and GPU seconds), beside its own measurement's details."""
    from mla_tune.records import TrialResult
    from mla_tune.study.measure import measure_set
    from mla_tune.study.plan import plan

    request, space = api.build_request(backend="FLASH_ATTN_MLA", workload="spec:64q1s4k")
    [target] = plan(request, FakeRunner().environment(), space)
    got = measure_set(FakeRunner(), target, target.default_configs())
    result, _ = got.trial_result({})
    details = TrialResult.from_attrs(result.to_attrs()).measurement.details
    assert details["recording_paired"] == "interleaved" and int(details["recording_blocks"]) > 0
    assert float(details["recording_gpu_s"]) > 0 and details["block_size"] == "64"
