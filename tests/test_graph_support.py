"""Graph support is a fact of the vLLM family: TRITON_MLA's cuda_graphs is searched where the runner's vLLM graphs
it (0.22+), is no parameter where it never does (0.20-0.21), and tables and profiles follow their own family."""

from __future__ import annotations

import optuna
from typer.testing import CliRunner

from mla_tune import api
from mla_tune.cli import app
from mla_tune.serving import deploy
from mla_tune.storage.urls import open_storage
from mla_tune.study import setup
from mla_tune.tables.export import load_table
from mla_tune.vllm_adapters import adapter_for

from .fakes import FakeRunner

NAME = "Fake100/deepseek-v3-tp1/TRITON_MLA/64q1s4k"


def _study(tmp_path, runner):
    out = api.run_study(backend="TRITON_MLA", workload="spec:64q1s4k", storage=str(tmp_path / "s.journal"),
                        runner=runner, confirm_rounds=4)
    storage = open_storage(api.parse_storage(str(tmp_path / "s.journal")), create=False)
    return out, optuna.load_study(study_name=NAME, storage=storage).trials


def test_a_runner_on_vllm_0_26_searches_triton_graphs(tmp_path):
    out, trials = _study(tmp_path, FakeRunner(optimum={"cuda_graphs": False, "num_kv_splits": 4}, vllm="0.26.0"))
    configs = [t.user_attrs["config"] for t in trials if "config" in t.user_attrs]
    assert configs[0] == {"prefill_backend": "auto", "num_kv_splits": "auto", "cuda_graphs": True}  # vLLM's default
    assert {c["cuda_graphs"] for c in configs} == {True, False}
    [s] = out.summaries
    assert s.best_attrs["config"] == {"prefill_backend": "auto", "num_kv_splits": 4, "cuda_graphs": False}
    # the table names its vLLM, and reads back under that family's space
    path, _ = api.export_table(tmp_path / "t.yaml", storage=str(tmp_path / "s.journal"), backend="TRITON_MLA")
    table = load_table(path)
    assert table["provenance"]["vllm"] == "0.26.0"
    [entry] = table["entries"]
    assert entry["params"]["cuda_graphs"] is False and entry["default_params"]["cuda_graphs"] is True
    # deployed on 0.26, eager TRITON is a global setting (cudagraph_mode); deploy takes GPU measurements only,
    # so the fake runner's table is relabelled as one
    table["provenance"]["runner"] = "vllm"
    d = deploy([table], vllm="0.26.0")
    assert dict(d.profile.global_)["cuda_graphs"] is False


def test_a_runner_on_vllm_0_20_never_asks_for_triton_graphs(tmp_path):
    _, trials = _study(tmp_path, FakeRunner(optimum={"num_kv_splits": 4}))
    configs = [t.user_attrs["config"] for t in trials if "config" in t.user_attrs]
    assert configs and all("cuda_graphs" not in c for c in configs)


def test_the_runners_vllm_decides_not_the_installed_one(monkeypatch):
    """A replay of 0.20 recordings on a host with 0.26 installed: the space built before the runner opened (as the
    installed vLLM runs it) is put under the recorded vLLM's graph support."""
    monkeypatch.setattr(setup, "default_adapter", lambda version=None: adapter_for("0.26.0"))
    request, space = setup.build_request(backend="TRITON_MLA", workload="spec:64q1s4k")
    assert "cuda_graphs" in space
    settled, _ = setup.check_space_available(space, FakeRunner(), request)
    assert "cuda_graphs" not in settled and settled.cuda_graph_support == "never"
    back, _ = setup.check_space_available(settled, FakeRunner(vllm="0.22.0"), request)
    assert "cuda_graphs" in back and back.cuda_graph_support == "uniform_batch"


def test_an_auto_space_follows_the_runners_vllm_per_backend():
    request, space = setup.build_request(backend="auto", workload="spec:64q1s4k")
    settled, _ = setup.check_space_available(space, FakeRunner(vllm="0.26.0"), request)
    assert "cuda_graphs" in settled.member("TRITON_MLA")
    settled, _ = setup.check_space_available(space, FakeRunner(), request)
    assert "cuda_graphs" not in settled.member("TRITON_MLA") and "cuda_graphs" in settled.member("FLASHMLA")


def test_spaces_lists_what_a_vllm_searches():
    r26 = CliRunner().invoke(app, ["spaces", "--vllm", "0.26.0"])
    r20 = CliRunner().invoke(app, ["spaces", "--vllm", "0.20.0"])
    assert r26.exit_code == r20.exit_code == 0, r26.output + r20.output
    assert "as vLLM 0.26 runs them" in r26.output and "as vLLM 0.20 runs them" in r20.output
    triton = lambda out: out[out.index("TRITON_MLA"):out.index("FLASHINFER_MLA")]  # noqa: E731
    assert "cuda_graphs" in triton(r26.output) and "cuda_graphs" not in triton(r20.output)
    # each family's own notes follow its table, and only its own
    flat = lambda out: " ".join(out.split())  # noqa: E731 - the console wraps long lines
    assert "TRITON_MLA runs inside full graphs of single-token decode batches" in flat(r26.output)
    assert "have no vLLM setting: the plugin applies them" in flat(r20.output)
    assert "single-token" not in flat(r20.output) and "split count and the reorder" not in flat(r26.output)
    bad = CliRunner().invoke(app, ["spaces", "--vllm", "0.19.0"])
    assert bad.exit_code == 2 and "not supported" in bad.output
