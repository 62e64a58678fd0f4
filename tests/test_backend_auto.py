"""``--backend auto``: the decode backend searched as a knob, from vLLM's own choice, end to end on CPU.

With the replay runner over the H200 sweeps (FLASH_ATTN_MLA, FLASHMLA and TRITON_MLA recorded at the same shapes)
and with the fake runner, whose planted optimum here sits on another backend than vLLM's choice.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import optuna
import pytest
from typer.testing import CliRunner

from mla_tune import api, batch_spec
from mla_tune.cli import app
from mla_tune.errors import DataFileError, RunnerUnavailableError, UsageError
from mla_tune.runners import register_runner
from mla_tune.runners.replay import ReplayRunner
from mla_tune.serving.deploy import deploy
from mla_tune.space_auto import AUTO, BACKEND, split_config
from mla_tune.storage.urls import open_storage
from mla_tune.study.setup import build_request, check_space_available, settle_auto
from mla_tune.tables.export import check_table, dump_yaml, load_table
from mla_tune.types import Case, Measurement, Status, freeze_params
from mla_tune.vllm_adapters import adapter_for

from .fakes import FakeRunner

ROOT = Path(__file__).resolve().parent.parent
SWEEPS = ROOT / "results/sweeps/h200"
REPLAY = f"replay:{SWEEPS}"
SHAPE = "256q1s4k"  # recorded at tp1 for FLASH_ATTN_MLA, FLASHMLA and TRITON_MLA
cli = CliRunner()


def trials_of(storage: Path, name: str) -> list:
    store = open_storage(api.parse_storage(str(storage)), create=False)
    return optuna.load_study(study_name=name, storage=store).trials


# -- what vLLM picks unasked, declared once in the adapter -------------------------------------------------------

def test_vllm_0_20_picks_fa_mla_on_hopper_flashmla_with_an_fp8_cache_and_flashinfer_on_blackwell():
    a = adapter_for("0.20.0")
    assert a.default_decode_backend("9.0") == "FLASH_ATTN_MLA"
    assert a.default_decode_backend("9.0", "fp8") == "FLASHMLA"  # FA MLA takes no fp8 KV cache
    assert a.default_decode_backend("10.0") == "FLASHINFER_MLA"
    assert a.default_decode_backend("8.0") == "TRITON_MLA"  # A100: neither FA3 MLA nor FlashMLA


def test_the_runner_answers_which_backend_vllm_picks_here():
    assert ReplayRunner.open(str(SWEEPS)).default_backend() == "FLASH_ATTN_MLA"  # recorded with 0.20.0 on SM 9.0
    assert FakeRunner().default_backend("fp8") == "FLASHMLA"


# -- the composite space --------------------------------------------------------------------------------------------

def settled(runner, workload=f"spec:{SHAPE}"):
    request, space = build_request(backend=AUTO, workload=workload)
    return request, check_space_available(space, runner, request)


def test_the_space_asks_the_backend_first_then_that_backends_own_parameters_prefixed():
    _, (space, excluded) = settled(FakeRunner())
    assert space.parameters[0].name == BACKEND and space.choice.default == "FLASH_ATTN_MLA"
    assert set(space.choice.values()) == {"FLASHMLA", "FLASH_ATTN_MLA", "TRITON_MLA"}
    assert {"CUTLASS_MLA", "FLASHINFER_MLA"} <= set(excluded)  # the fake cannot run them: no choice
    assert "FLASHMLA.reorder_batch_threshold" in space and "FLASH_ATTN_MLA.reorder_batch_threshold" in space
    assert space["FLASHMLA.reorder_batch_threshold"].default != space["FLASH_ATTN_MLA.reorder_batch_threshold"].default
    shape = batch_spec.parse(SHAPE)
    configs = space.expand(shape)
    assert configs[0] == {BACKEND: "FLASH_ATTN_MLA", **space.member("FLASH_ATTN_MLA").default_config(shape)}
    assert {c[BACKEND] for c in configs} == {"FLASHMLA", "FLASH_ATTN_MLA", "TRITON_MLA"}
    assert len(configs) == sum(len(m.expand(shape)) for m in space.members)  # no two backends' configs collide
    for c in configs:  # the answers of each config run it
        answers = space.answers(c)
        assert space.resolve(shape, lambda p, a=answers: a[p.name]) == c


def test_split_config_gives_the_runner_the_backend_and_its_params_apart():
    assert split_config(AUTO, {BACKEND: "FLASHMLA", "cuda_graphs": True}) == ("FLASHMLA", {"cuda_graphs": True})
    assert split_config("FLASHMLA", {"cuda_graphs": True}) == ("FLASHMLA", {"cuda_graphs": True})


# -- a replayed study on the H200 sweeps ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def replayed(tmp_path_factory):
    """An exhaustive auto study of 256q1s4k, replayed, and the recorded median of every config of its space."""
    tmp = tmp_path_factory.mktemp("auto")
    runner = ReplayRunner.open(str(SWEEPS))
    request, (space, _) = settled(runner)
    shape = batch_spec.parse(SHAPE)
    recorded = {}
    for c in space.expand(shape):
        backend, params = split_config(AUTO, c)
        rec = runner.lookup(Case(backend, shape, request.dims, freeze_params(params)))
        if rec is not None and rec["status"] == "ok":
            recorded[freeze_params(c)] = statistics.median(rec["samples_ms"])
    storage = tmp / "s.journal"
    out = api.run_study(backend=AUTO, workload=f"spec:{SHAPE}", storage=str(storage), runner=REPLAY,
                        n_trials=len(space.expand(shape)), confirm_rounds=4)
    return out, storage, recorded


def test_a_replayed_auto_study_spans_the_backends_from_vllms_choice_to_the_recorded_optimum(replayed):
    out, storage, recorded = replayed
    [s] = out.summaries
    assert s.name == f"H200-replay/deepseek-v3-tp1/auto/{SHAPE}"
    ts = trials_of(storage, s.name)
    configs = [t.user_attrs["config"] for t in ts if "config" in t.user_attrs]
    assert {c[BACKEND] for c in configs} == {"FLASHMLA", "FLASH_ATTN_MLA", "TRITON_MLA"}
    assert ts[0].user_attrs["role"] == "baseline" and ts[0].user_attrs["config"][BACKEND] == "FLASH_ATTN_MLA"
    assert {c[BACKEND] for c in configs[1:3]} == {"FLASHMLA", "TRITON_MLA"}  # each backend's default comes next
    assert s.measured == len(recorded)  # exhaustive: every recorded config of every backend
    optimum = min(recorded, key=recorded.get)

    def ran(config):  # on the H200 auto prefill runs fa3: the two are twins, apart only by noise
        return freeze_params({k: ("fa3" if (k, v) == ("prefill_backend", "auto") else v) for k, v in dict(config).items()})

    assert ran(s.best_attrs["config"]) == ran(optimum)
    assert s.attrs["backend"] == AUTO and s.attrs["space"][BACKEND]["default"] == "FLASH_ATTN_MLA"
    conf = s.confirmed
    assert conf is not None and conf.candidates and all(c.status == "ok" for c in conf.candidates)
    assert conf.default_configs[0][BACKEND] == "FLASH_ATTN_MLA"


def test_a_replayed_auto_study_exports_a_table_whose_configs_name_their_backend(replayed, tmp_path):
    _, storage, _ = replayed
    path, _ = api.export_table(tmp_path / "t.yaml", storage=str(storage), backend=AUTO)
    loaded = load_table(path)
    assert loaded["backend"] == AUTO and loaded["schema_version"] == 2
    [entry] = loaded["entries"]
    assert entry["default_params"][BACKEND] == "FLASH_ATTN_MLA" and BACKEND in entry["params"]
    assert {p["params"][BACKEND] for p in entry["landscape"]} == {"FLASHMLA", "FLASH_ATTN_MLA", "TRITON_MLA"}
    r = cli.invoke(app, ["show", "--storage", str(storage), "--backend", AUTO])
    assert r.exit_code == 0 and f"auto/{SHAPE}" in r.output
    r = cli.invoke(app, ["flags", str(path)])
    assert r.exit_code == 0 and '"backend": "FLASH_ATTN_MLA"' in r.output, r.output


# -- the fake runner: a planted optimum on another backend than vLLM's ----------------------------------------------

class OtherBackendWins(FakeRunner):
    """FlashMLA under its full CUDA graph is 0.8x of everything else, vLLM's default included."""

    def factor(self, case: Case) -> float:
        if case.backend == "FLASHMLA" and case.param_dict.get("cuda_graphs") is True:
            return 0.8
        return super().factor(case)


register_runner("fake-auto", lambda arg: OtherBackendWins())


def fake_study(tmp_path, runner=None, **kw):
    args = {"backend": AUTO, "workload": "spec:64q1s4k", "storage": str(tmp_path / "s.journal"),
            "runner": runner or OtherBackendWins(), "confirm_rounds": 4}
    return api.run_study(**{**args, **kw})


@pytest.fixture
def fake_table(tmp_path):
    fake_study(tmp_path)
    path, _ = api.export_table(tmp_path / "t.yaml", storage=str(tmp_path / "s.journal"), backend=AUTO)
    return path


def test_a_winner_on_another_backend_is_confirmed_shown_and_flagged_with_its_backend(tmp_path, fake_table):
    [entry] = load_table(fake_table)["entries"]
    assert entry["tuned"] and entry["params"][BACKEND] == "FLASHMLA" and entry["speedup"] > 1.2
    assert entry["default_params"][BACKEND] == "FLASH_ATTN_MLA"
    r = cli.invoke(app, ["show", "--storage", str(tmp_path / "s.journal")])
    assert r.exit_code == 0 and "backend=FLASHMLA" in r.output, r.output
    r = cli.invoke(app, ["flags", str(fake_table)])
    # FlashMLA's own defaults need no setting: the backend is all there is to say
    assert r.exit_code == 0 and """--attention-config '{"backend": "FLASHMLA"}'""" in r.output, r.output


def test_deploy_refuses_an_auto_table_in_one_line(fake_table):
    with pytest.raises(UsageError, match="runs one backend: deploy that backend's own table"):
        deploy([load_table(fake_table)])
    r = cli.invoke(app, ["deploy", str(fake_table), "-o", str(fake_table.parent / "p.yaml")])
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and "FLASHMLA on 1 shape" in lines[0], r.output
    assert not (fake_table.parent / "p.yaml").exists()


def test_verify_measures_each_config_on_its_own_backend(fake_table):
    runner = OtherBackendWins()
    v = api.verify_target(fake_table, runner=runner, rounds=4)
    [result] = v.results
    assert result.verdict == "holds"
    assert {c.backend for c in runner.calls} == {"FLASHMLA", "FLASH_ATTN_MLA"}
    assert all(BACKEND not in c.param_dict for c in runner.calls)


def test_a_new_auto_study_starts_from_the_nearest_finished_auto_studys_optimum(tmp_path):
    fake_study(tmp_path)
    fake_study(tmp_path, workload="spec:32q1s4k")
    ts = trials_of(tmp_path / "s.journal", "Fake100/deepseek-v3-tp1/auto/32q1s4k")
    assert ts[0].params[BACKEND] == "FLASHMLA" and ts[0].params["FLASHMLA.cuda_graphs"] is True
    assert ts[1].user_attrs["role"] == "baseline"


def test_a_mix_study_shares_one_backend_across_its_shapes(tmp_path):
    [s] = fake_study(tmp_path, workload="spec:8q1s4k,64q1s4k", objective="mix").summaries
    configs = [c["configs"] for c in s.confirmation["candidates"]]
    assert all(len({c[BACKEND] for c in cs}) == 1 for cs in configs)
    win = s.confirmation["candidates"][s.confirmation["winner"]]
    assert {c[BACKEND] for c in win["configs"]} == {"FLASHMLA"}


def test_the_cli_runs_an_auto_study_and_says_which_backends_were_no_choice(tmp_path):
    r = cli.invoke(app, ["study", "--backend", AUTO, "--workload", "spec:64q1s4k", "--trials", "4",
                         "--confirm-rounds", "2", "--storage", str(tmp_path / "s.journal"), "--runner", "fake-auto"])
    assert r.exit_code == 0, r.output
    assert "decode CUTLASS_MLA" in r.output and "Fake100/deepseek-v3-tp1/auto/64q1s4k" in r.output


# -- bad input -------------------------------------------------------------------------------------------------------

def test_auto_is_refused_in_one_line_where_vllms_own_choice_cannot_run(tmp_path):
    # FA MLA, what vLLM runs on an H200, is not in these recordings (TRITON_MLA's and FLASHMLA's alone): the
    # baseline would be missing
    import shutil

    sweeps = tmp_path / "sweeps"
    sweeps.mkdir()
    shutil.copy(ROOT / "results/sweeps/h200/TRITON_FLASHMLA-deepseek-v3-tp1-decode_4k.jsonl", sweeps)
    storage = tmp_path / "s.journal"
    r = cli.invoke(app, ["study", "--backend", AUTO, "--workload", "spec:q1s4k", "--runner", f"replay:{sweeps}",
                         "--storage", str(storage)])
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code != 0 and len(lines) == 1, r.output
    assert "FLASH_ATTN_MLA, the backend vLLM picks here, cannot run" in lines[0] and "not recorded" in lines[0]
    assert not storage.exists()


def test_auto_is_refused_where_the_runner_lacks_vllms_choice():
    runner = FakeRunner(unavailable=("CUTLASS_MLA", "FLASHINFER_MLA", "FLASH_ATTN_MLA"))
    request, space = build_request(backend=AUTO, workload="spec:64q1s4k")
    with pytest.raises(RunnerUnavailableError, match="FLASH_ATTN_MLA, the backend vLLM picks here, cannot run"):
        settle_auto(runner, request, space)


def test_a_backend_the_runner_cannot_answer_for_some_shape_is_no_choice():
    class Unrecorded(FakeRunner):
        def unanswerable(self, case: Case) -> str | None:
            return "TRITON_MLA is not recorded here" if case.backend == "TRITON_MLA" else None

    request, space = build_request(backend=AUTO, workload="spec:64q1s4k")
    space, excluded = settle_auto(Unrecorded(), request, space)
    assert "TRITON_MLA" not in space.choice.values() and excluded["TRITON_MLA"] == "TRITON_MLA is not recorded here"


def test_a_sweep_of_auto_is_refused(tmp_path):
    with pytest.raises(UsageError, match="a sweep records named backends, not auto"):
        api.run_sweep(backend=AUTO, workload="spec:8q1s4k", output=tmp_path / "s.jsonl", runner=REPLAY)


@pytest.mark.parametrize("change, key", [
    (lambda t: t.update(schema_version=1), "schema_version"),
    (lambda t: t["entries"][0]["params"].pop(BACKEND), f"entries[0].params.{BACKEND}"),
    (lambda t: t["entries"][0]["params"].update(backend="FLASHMLA", max_num_splits=8),
     "entries[0].params.max_num_splits"),
])
def test_an_auto_table_is_validated_against_each_configs_own_backend(fake_table, change, key):
    table = load_table(fake_table)
    check_table(fake_table, table)
    change(table)
    from mla_tune import _yaml

    with pytest.raises(DataFileError) as e:
        check_table(fake_table, _yaml.parse("t.yaml", dump_yaml(table)))
    assert e.value.key == key


def test_failed_measurements_of_one_backend_stay_data_in_an_auto_study(tmp_path):
    class TritonFails(OtherBackendWins):
        def refusal(self, case: Case) -> Measurement | None:
            if case.backend == "TRITON_MLA":
                return Measurement.failed(Status.ERROR, "planted failure")
            return super().refusal(case)

    [s] = fake_study(tmp_path, runner=TritonFails(), n_trials=40).summaries
    assert s.failed == 8 and s.best_attrs["config"][BACKEND] == "FLASHMLA"


# -- resume -----------------------------------------------------------------------------------------------------------

class GpuGoneAt(FakeRunner):
    """The GPU becomes unusable at measurement ``at`` (counted from 1): the runner raises, as VllmRunner now does."""

    def __init__(self, at: int, **kw) -> None:
        super().__init__(**kw)
        self.at = at

    def on_measure(self):
        if self.events == self.at:
            raise RunnerUnavailableError("the GPU cannot be used here: import torch/vllm: CUDA driver initialization")


def test_an_auto_study_stopped_by_an_unusable_gpu_still_tries_every_backend_on_resume(tmp_path):
    # The GPU goes at measurement 2 (the first opening): the stopped run fails the queued openings unmeasured, so
    # the resume must queue them again, or the whole budget goes to vLLM's own backend.
    storage = str(tmp_path / "s.journal")
    args = dict(backend=AUTO, workload="spec:64q1s4k", storage=storage, n_trials=8, confirm_rounds=2)
    try:
        api.run_study(runner=GpuGoneAt(2), **args)
    except RunnerUnavailableError:
        pass
    api.run_study(runner=FakeRunner(), **args)
    store = open_storage(api.parse_storage(storage), create=False)
    study = optuna.load_study(study_name="Fake100/deepseek-v3-tp1/auto/64q1s4k", storage=store)
    measured = {t.params.get("backend") for t in study.trials if t.user_attrs.get("status") == "ok"}
    assert measured >= {"FLASH_ATTN_MLA", "FLASHMLA", "TRITON_MLA"}, measured


def test_an_auto_table_diffed_against_its_backends_own_differs_only_where_settings_do(replayed, tmp_path):
    from mla_tune.tables.diff import diff_tables
    from mla_tune.tables.landscape_io import read_table

    _, storage, _ = replayed
    auto_path, _ = api.export_table(tmp_path / "auto.yaml", storage=str(storage), backend=AUTO)
    one = tmp_path / "one.journal"
    api.run_study(backend="FLASH_ATTN_MLA", workload=f"spec:{SHAPE}", storage=str(one), runner=REPLAY, confirm_rounds=4)
    fa_path, _ = api.export_table(tmp_path / "fa.yaml", storage=str(one), backend="FLASH_ATTN_MLA")
    d = diff_tables(read_table(fa_path), read_table(auto_path))
    [row] = d.rows
    assert row.b is not None and dict(row.b.params[0])[BACKEND] == "FLASH_ATTN_MLA"  # vLLM's choice wins here
    assert not [x for x in row.disagreements if x.knob == BACKEND], row.disagreements
    same = diff_tables(read_table(auto_path), read_table(auto_path))
    assert same.count("same") == 1


def test_resuming_an_auto_study_where_other_backends_run_says_so(tmp_path):
    storage = str(tmp_path / "s.journal")
    args = dict(backend=AUTO, workload="spec:64q1s4k", storage=storage, n_trials=4, confirm_rounds=2)
    api.run_study(runner=FakeRunner(), **args)
    with pytest.raises(UsageError, match="chose among the decode backends .*FLASHMLA.*here FLASH_ATTN_MLA, "
                                         "TRITON_MLA can run"):
        api.run_study(runner=FakeRunner(unavailable=("CUTLASS_MLA", "FLASHINFER_MLA", "FLASHMLA")), **args)
