"""The replay runner: answers only from recordings, with their noise and provenance; passes the runner contract."""

from __future__ import annotations

import json

import pytest

from mla_tune import api, batch_spec
from mla_tune.errors import DataFileError, RunnerUnavailableError
from mla_tune.models import get_model
from mla_tune.runners import make_runner
from mla_tune.runners.replay import ReplayRunner
from mla_tune.types import Case, Status, freeze_params

from .fakes import FakeRunner
from .runner_contract import RunnerContract

OK_CONFIG = {"cuda_graphs": True, "max_num_splits": 8, "prefill_backend": "auto", "reorder_batch_threshold": 512}


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("sweeps")
    for backend in ("FLASH_ATTN_MLA", "TRITON_MLA"):
        api.run_sweep(backend=backend, workload="spec:8q1s1k", output=d / f"{backend}.jsonl", tp=8,
                      runner=FakeRunner(optimum={"max_num_splits": 8}))
    api.run_sweep(backend="CUTLASS_MLA", workload="spec:8q1s1k", output=d / "cutlass.jsonl", tp=8,
                  runner=FakeRunner(unavailable=()))
    return d


def case(backend="FLASH_ATTN_MLA", config=OK_CONFIG, spec="8q1s1k", tp=8):
    return Case(backend, batch_spec.parse(spec), get_model("deepseek-v3", tp), freeze_params(config))


class TestReplayContract(RunnerContract):
    @pytest.fixture
    def runner(self, sweep_dir):
        return ReplayRunner.open(str(sweep_dir))

    @pytest.fixture
    def ok_case(self):
        return case()

    @pytest.fixture
    def refused_case(self):
        return case(spec="16q1s1k")

    @pytest.fixture
    def refused_arm(self):
        return case(backend="FLASHMLA", config={})  # not in these sweeps


def test_samples_are_drawn_from_one_recording_of_the_config(sweep_dir):
    r = ReplayRunner.open(str(sweep_dir), seed=1)
    recs = r.recordings(case())
    assert [rec["round"] for rec in recs] == [1, 2, 3]  # the sweep's default: three interleaved rounds
    assert r.lookup(case())["recordings"] == 3
    used = set()
    for _ in range(12):
        m = r.measure(case())
        assert m.status is Status.OK and dict(m.details)["replayed_from"] == "FLASH_ATTN_MLA.jsonl"
        source = [i for i, rec in enumerate(recs) if set(m.samples_ms) <= set(rec["samples_ms"])]
        assert source and len(m.samples_ms) == len(recs[source[0]]["samples_ms"])
        used.add(source[0])
    assert len(used) > 1  # the run-to-run spread reaches the study, not one recording's noise


def test_sweeps_are_interleaved_rounds_and_resume_the_missing_ones(tmp_path):
    out = tmp_path / "s.jsonl"
    runner = FakeRunner(optimum={"max_num_splits": 8})
    n1 = api.run_sweep(backend="FLASH_ATTN_MLA", workload="spec:8q1s1k", output=out, tp=8, runner=runner, rounds=1)
    lines = [json.loads(x) for x in out.read_text().splitlines()[1:]]
    assert n1 == len(lines) and {x["round"] for x in lines} == {1}
    n2 = api.run_sweep(backend="FLASH_ATTN_MLA", workload="spec:8q1s1k", output=out, tp=8, runner=runner, rounds=3)
    assert n2 == 2 * n1  # rounds 2 and 3 only
    lines = [json.loads(x) for x in out.read_text().splitlines()[1:]]
    by_round = {r: [json.dumps(x["config"], sort_keys=True) for x in lines if x["round"] == r] for r in (1, 2, 3)}
    assert sorted(by_round[1]) == sorted(by_round[2]) == sorted(by_round[3])
    assert len({tuple(v) for v in by_round.values()}) == 3  # each round visits the configs in a new order
    assert api.run_sweep(backend="FLASH_ATTN_MLA", workload="spec:8q1s1k", output=out, tp=8, runner=runner,
                         rounds=3) == 0


def test_several_backends_and_workloads_share_one_sweep_call(tmp_path):
    out = tmp_path / "s.jsonl"
    runner = FakeRunner(optimum={"max_num_splits": 8})
    n = api.run_sweep(backend=["FLASH_ATTN_MLA", "TRITON_MLA"], workload=["spec:8q1s1k", "spec:16q1s1k"],
                      output=out, tp=8, runner=runner, rounds=1)
    lines = [json.loads(x) for x in out.read_text().splitlines()[1:]]
    assert n == len(lines)
    assert {(x["backend"], x["shape"]) for x in lines} == {(b, s) for b in ("FLASH_ATTN_MLA", "TRITON_MLA")
                                                           for s in ("8q1s1k", "16q1s1k")}


def test_a_copied_sweep_file_is_refused(sweep_dir, tmp_path):
    d = tmp_path / "copies"
    d.mkdir()
    text = (sweep_dir / "FLASH_ATTN_MLA.jsonl").read_text()
    (d / "a.jsonl").write_text(text)
    (d / "b.jsonl").write_text(text)
    with pytest.raises(DataFileError, match="one recording per config and round"):
        ReplayRunner.open(str(d))


def test_missing_case_is_not_recorded_never_invented(sweep_dir):
    r = make_runner(f"replay:{sweep_dir}")
    m = r.measure(case(tp=1))
    assert m.status is Status.ERROR and m.message.startswith("not recorded: FLASH_ATTN_MLA deepseek-v3-tp1")
    m = r.measure(case(config=OK_CONFIG | {"max_num_splits": 3}))
    assert m.status is Status.ERROR and "not recorded" in m.message


def test_recorded_failures_replay_as_failures(sweep_dir):
    r = ReplayRunner.open(str(sweep_dir))
    cfg = {"cuda_graphs": True, "num_kv_splits": "auto", "prefill_backend": "auto"}
    assert r.measure(case("CUTLASS_MLA", cfg)).status is Status.OK
    # FakeRunner recorded no CUTLASS failure here; recorded unsupported prefill backends are excluded in sweeps
    statuses = {s.name: s for s in r.backends()}
    assert statuses["FLASH_ATTN_MLA"].available and not statuses["FLASHMLA"].available
    assert "not recorded" in statuses["FLASHMLA"].reason


def test_environment_is_the_recordings_with_runner_replay(sweep_dir):
    env = ReplayRunner.open(str(sweep_dir)).environment()
    assert env.runner == "replay" and env.gpu_name == "NVIDIA Fake100 80GB" and env.recorded
    assert env.fingerprint == "Fake100-replay" and dict(env.extra)["recorded_by"] == "fake"


def test_study_through_replay_says_replay_everywhere(sweep_dir, tmp_path):
    out = api.run_study(backend="FLASH_ATTN_MLA", workload="spec:8q1s1k", tp=8, runner=f"replay:{sweep_dir}",
                        storage=str(tmp_path / "s.journal"), confirm_rounds=4)
    [s] = out.summaries
    assert s.name == "Fake100-replay/deepseek-v3-tp8/FLASH_ATTN_MLA/8q1s1k"
    assert s.best_attrs["config"]["max_num_splits"] == 8 and s.best_attrs["provenance"]["runner"] == "replay"
    _, table = api.export_table(tmp_path / "t.yaml", storage=str(tmp_path / "s.journal"), backend="FLASH_ATTN_MLA",
                                tp=8)
    assert table["provenance"]["runner"] == "replay" and table["entries"][0]["tuned"]


def test_bad_paths_and_files(tmp_path, sweep_dir):
    with pytest.raises(RunnerUnavailableError, match="no recorded sweeps"):
        ReplayRunner.open(str(tmp_path / "nowhere"))
    with pytest.raises(RunnerUnavailableError, match="needs recorded sweeps"):
        make_runner("replay")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"kind": "mla-tune/sweep", "schema_version": 1, "environment": {}}) + "\n")
    with pytest.raises(DataFileError, match="line 1.environment"):
        ReplayRunner.open(str(bad))
    header = (sweep_dir / "TRITON_MLA.jsonl").read_text().splitlines()[0]
    bad.write_text(header + "\n{oops\n")
    with pytest.raises(DataFileError, match="line 2: not JSON"):
        ReplayRunner.open(str(bad))


def test_sweep_resumes_without_remeasuring(tmp_path):
    out = tmp_path / "s.jsonl"
    first = FakeRunner()
    n1 = api.run_sweep(backend="FLASHMLA", workload="spec:8q4s1k", output=out, runner=first)
    again = FakeRunner()
    n2 = api.run_sweep(backend="FLASHMLA", workload="spec:8q4s1k", output=out, runner=again)
    assert n1 == len(first.calls) > 0 and n2 == 0 and not again.calls
    lines = out.read_text().splitlines()
    assert len(lines) == n1 + 1 and json.loads(lines[0])["kind"] == "mla-tune/sweep"


def test_backends_say_why_they_were_not_recorded(sweep_dir):
    """A backend that could not run where the sweep was made gets that reason, not just "not recorded"."""
    st = {(s.kind, s.name): s for s in ReplayRunner.open(str(sweep_dir)).backends()}
    assert st[("decode", "FLASH_ATTN_MLA")].available
    assert st[("decode", "FLASHINFER_MLA")].reason == "unavailable when recorded: needs compute capability 10.x"
    assert st[("prefill", "flashinfer")].reason == "unavailable when recorded: needs SM100"
    assert not st[("decode", "FLASHMLA")].available and "not recorded in" in st[("decode", "FLASHMLA")].reason


def test_recorded_pairs_replay_with_the_gpus_pairing(tmp_path):
    """A sweep records each config against vLLM's default in one recording; on a GPU whose clock moves by +-5% from
    one recording to the next, the replayed ratio keeps the pairing's precision, and the composition from separate
    recordings (what older sweeps hold) does not."""
    out = tmp_path / "s.jsonl"
    api.run_sweep(backend="FLASH_ATTN_MLA", workload="spec:8q1s1k", output=out, tp=8,
                  runner=FakeRunner(optimum={"max_num_splits": 8}, clock_noise=0.05, noise=0.002, blocks=20))
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert lines[0]["schema_version"] == 2
    rec = next(x for x in lines[1:] if x["config"]["max_num_splits"] == 8)
    assert rec["reference"]["config"]["max_num_splits"] == 32 and len(rec["order"]) == 4 * 20
    assert rec["recording"]["paired"] == "interleaved"
    runner = ReplayRunner.open(str(out), seed=1)
    default = case(config=OK_CONFIG | {"max_num_splits": 32})
    ratios = []
    for _ in range(20):
        pm = runner.measure_paired([default, case(), default])
        assert pm.ok and dict(pm.details)["paired"] == "replayed pairs" and pm.pairs[1].interleaved
        assert pm.pairs[2].speedup == pytest.approx(1.0, abs=0.005)  # the default against its second build
        ratios.append(pm.pairs[1].speedup)
    assert max(ratios) / min(ratios) < 1.01 and sum(ratios) / len(ratios) == pytest.approx(1.25, rel=0.01)
    apart = [runner.measure(default).median_ms / runner.measure(case()).median_ms for _ in range(20)]
    assert max(apart) / min(apart) > 1.03  # one recording against another carries the clock between them


def test_sweeps_recorded_before_pairing_compose_their_pairs_and_say_so():
    runner = ReplayRunner.open("results/sweeps/h100")
    dims = get_model("deepseek-v3", 1)
    shape = batch_spec.parse("64q1s4k")
    default = {"cuda_graphs": True, "max_num_splits": 32, "prefill_backend": "auto", "reorder_batch_threshold": 512}
    pm = runner.measure_paired([Case("FLASH_ATTN_MLA", shape, dims, freeze_params(default)),
                                Case("FLASH_ATTN_MLA", shape, dims, freeze_params(default | {"max_num_splits": 1}))])
    assert pm.ok and not pm.pairs[1].interleaved and pm.pairs[1].ci is None
    assert dict(pm.details)["paired"].startswith("no: 1 arm(s) composed from separate recordings")


def test_a_pair_whose_order_does_not_match_its_samples_is_refused(tmp_path):
    out = tmp_path / "s.jsonl"
    api.run_sweep(backend="FLASH_ATTN_MLA", workload="spec:8q1s1k", output=out, tp=8, runner=FakeRunner())
    header, first, *rest = out.read_text().splitlines()
    rec = json.loads(first)
    rec["order"] = rec["order"][:-4]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([header, json.dumps(rec), *rest]) + "\n")
    with pytest.raises(DataFileError, match=r"line 2\.order: does not match the samples"):
        ReplayRunner.open(str(bad))


def test_a_sweep_of_separate_recordings_is_not_resumed_with_pairs(tmp_path):
    from mla_tune.errors import UsageError

    out = tmp_path / "old.jsonl"
    api.run_sweep(backend="FLASHMLA", workload="spec:8q4s1k", output=out, runner=FakeRunner())
    lines = out.read_text().splitlines()
    header = json.loads(lines[0]) | {"schema_version": 1}
    out.write_text("\n".join([json.dumps(header), *lines[1:]]) + "\n")
    with pytest.raises(UsageError, match="holds separate recordings"):
        api.run_sweep(backend="FLASHMLA", workload="spec:8q4s1k", output=out, runner=FakeRunner())
