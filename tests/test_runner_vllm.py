"""The vLLM runner: CPU tests of its plumbing and watchdog (fake workers), gpu tests of the real thing."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import pytest

from mla_tune.batch_spec import parse
from mla_tune.errors import RunnerUnavailableError, UsageError, one_line
from mla_tune.models import get_model
from mla_tune.runners import _vllm_plan as plan
from mla_tune.runners import vllm as vllm_runner_mod
from mla_tune.runners.vllm import VllmRunner, check_available
from mla_tune.space import BACKENDS
from mla_tune.types import (BackendStatus, Case, Environment, Measurement, PairedMeasurement, PairStat, Request, Shape,
                             Status, freeze_params)
from mla_tune.vllm_adapters import adapter_for

from .runner_contract import RunnerContract

DIMS = get_model("deepseek-v3", tp=8)


def make_case(backend: str, spec: str, dims=DIMS, kv: str = "auto", **params) -> Case:
    shape = parse(spec)
    config = plan.space_of(backend).default_config(shape)
    config.update(params)
    return Case(backend, shape, dims, freeze_params(config), kv)


# -- create / availability ------------------------------------------------------------------------
def test_import_needs_no_torch() -> None:
    code = "import sys, mla_tune.runners.vllm; sys.exit(1 if {'torch','vllm'} & set(sys.modules) else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.mark.skipif(importlib.util.find_spec("torch") is not None, reason="torch is installed here")
def test_create_without_torch_is_one_line_with_hint() -> None:
    with pytest.raises(RunnerUnavailableError) as err:
        VllmRunner.create(None)
    assert "\n" not in str(err.value) and "torch is not installed" in str(err.value)
    assert "replay:" in err.value.hint


def _fake_find_spec(present: set[str]):
    real = importlib.util.find_spec
    return lambda name, *a: (real("json") if name in present else None) if name in ("torch", "vllm") else real(name)


@pytest.mark.parametrize("present, version, probe, expected", [
    ({"torch"}, "0.20.0", None, "vLLM is not installed"),
    ({"torch", "vllm"}, "0.19.1", None, "vLLM 0.19.1 is installed"),
    ({"torch", "vllm"}, None, None, "unknown version"),
    ({"torch", "vllm"}, "0.33.0", None, "the vllm runner measures kernels through vLLM 0.20, 0.21, 0.22-0.25, 0.26 internals only"),
    ({"torch", "vllm"}, "0.29.0", None, "vLLM 0.29.0 is installed"),
    ({"torch", "vllm"}, "0.20.0", "no CUDA GPU visible (torch.cuda.is_available() is False)", "no CUDA GPU"),
])
def test_check_available_messages(monkeypatch, present, version, probe, expected) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", _fake_find_spec(present))
    monkeypatch.setattr(vllm_runner_mod, "_installed_vllm_version", lambda: version)
    with pytest.raises(RunnerUnavailableError) as err:
        check_available(probe=lambda: probe)
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_check_available_passes_for_020(monkeypatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", _fake_find_spec({"torch", "vllm"}))
    for version in ("0.20.0", "0.20.1", "0.20.0+cu130", "0.20.2rc1", "0.21.0", "0.26.0"):
        monkeypatch.setattr(vllm_runner_mod, "_installed_vllm_version", lambda v=version: v)
        check_available(probe=lambda: None)


def test_runner_arg_parsing() -> None:
    assert plan.parse_runner_arg("warmup=3,samples=10,timeout_s=5") == {"warmup": 3, "samples": 10,
                                                                        "timeout_s": 5.0}
    assert plan.parse_runner_arg(None) == {}
    with pytest.raises(ValueError, match="bad vllm runner option"):
        plan.parse_runner_arg("nope=1")
    with pytest.raises(ValueError, match="not a int"):
        plan.parse_runner_arg("warmup=x")
    with pytest.raises(UsageError):
        VllmRunner(bogus=1)


# -- plumbing -------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend, cc, expected", [
    ("CUTLASS_MLA", "9.0", "CUTLASS_MLA needs compute capability 10.x (this GPU: 9.0)"),
    ("FLASHINFER_MLA", "9.0", "FLASHINFER_MLA needs compute capability 10.x (this GPU: 9.0)"),
    ("CUTLASS_MLA", "10.0", None), ("FLASHMLA", "9.0", None), ("FLASHMLA", "10.0", "9.x"),
    ("FLASH_ATTN_MLA", "8.0", "9.x"), ("TRITON_MLA", "8.0", None),
])
def test_capability_refusal(backend, cc, expected) -> None:
    got = plan.capability_refusal(backend, cc)
    assert got == expected if expected is None else expected in got


@pytest.fixture
def vllm_020(monkeypatch):
    """Plan against vLLM 0.20's facts whichever vLLM is installed (on the GPU machine it may be 0.26)."""
    monkeypatch.setattr(plan, "adapter", lambda: adapter_for("0.20.0"))


@pytest.fixture
def vllm_026(monkeypatch):
    monkeypatch.setattr(plan, "adapter", lambda: adapter_for("0.26.0"))


def test_prefill_capability(vllm_020) -> None:
    for name in ("flashinfer", "cudnn", "trtllm"):
        assert "needs compute capability 10.x" in plan.prefill_capability_refusal(name, "9.0")
        assert plan.prefill_capability_refusal(name, "10.0") is None
    assert plan.prefill_capability_refusal("fa3", "9.0") is None


def test_cutlass_splits_map_to_impl_attribute() -> None:
    auto = plan.make_plan(make_case("CUTLASS_MLA", "8q1s1k"))
    assert plan.impl_attributes(auto) == {"_num_kv_splits": -1}
    eight = plan.make_plan(make_case("CUTLASS_MLA", "8q1s1k", num_kv_splits=8))
    assert plan.impl_attributes(eight) == {"_num_kv_splits": 8}
    assert auto.engine == eight.engine and auto.metadata_key == eight.metadata_key  # no rebuild


def test_triton_splits_are_per_call() -> None:
    auto = plan.make_plan(make_case("TRITON_MLA", "8q1s4k"))
    forced = plan.make_plan(make_case("TRITON_MLA", "8q1s4k", num_kv_splits=16))
    assert auto.triton_splits is None and forced.triton_splits == 16
    assert plan.impl_attributes(forced) == {}
    assert auto.engine == forced.engine and auto.metadata_key == forced.metadata_key
    assert auto.threshold is None and not auto.cuda_graphs  # no knob: the builder's fixed 1, eager


def test_flashinfer_plumbing() -> None:
    p = plan.make_plan(make_case("FLASHINFER_MLA", "32q4s4k", reorder_batch_threshold=4, cuda_graphs=True))
    assert p.threshold == 4 and p.cuda_graphs and p.engine.cuda_graphs
    assert plan.builder_attributes(p, {}) == {"reorder_batch_threshold": 4}


def test_fa_split_cap_only_under_full_graphs_with_aot() -> None:
    p = plan.make_plan(make_case("FLASH_ATTN_MLA", "64q1s4k", max_num_splits=8))
    both = {"fa_aot_schedule": True, "use_full_cuda_graph": True}
    assert plan.builder_flags() == ("fa_aot_schedule", "use_full_cuda_graph")
    assert plan.builder_attributes(p, both) == {"reorder_batch_threshold": 512, "max_num_splits": 8}
    # FA2 (no ahead-of-time scheduler) or no full graph: vLLM never uses a cap; the builder keeps its own (0)
    assert plan.builder_attributes(p, both | {"fa_aot_schedule": False}) == {"reorder_batch_threshold": 512}
    assert plan.builder_attributes(p, both | {"use_full_cuda_graph": False}) == {"reorder_batch_threshold": 512}
    other = plan.make_plan(make_case("FLASH_ATTN_MLA", "64q1s4k", max_num_splits=16))
    assert other.engine == p.engine and other.metadata_key != p.metadata_key  # new metadata, same engine


def test_engine_key_follows_prefill_kv_and_graphs() -> None:
    base = plan.make_plan(make_case("FLASH_ATTN_MLA", "64q1s4k")).engine
    assert plan.make_plan(make_case("FLASH_ATTN_MLA", "64q1s4k", prefill_backend="fa2")).engine != base
    assert plan.make_plan(make_case("FLASH_ATTN_MLA", "64q1s4k", cuda_graphs=False)).engine != base
    assert plan.make_plan(make_case("FLASH_ATTN_MLA", "64q1s4k", kv="fp8")).engine != base
    assert plan.make_plan(make_case("FLASH_ATTN_MLA", "64q1s4k", kv="bfloat16")).engine == base


def test_unknown_and_misplaced_parameters_are_named() -> None:
    with pytest.raises(plan.PlanError) as err:
        plan.make_plan(make_case("TRITON_MLA", "8q1s1k", bogus=1, num_kv_splits=4))
    assert err.value.status is Status.ERROR and "bogus" in str(err.value)
    with pytest.raises(plan.PlanError, match="num_kv_splits does not apply to FLASHMLA"):
        plan.make_plan(make_case("FLASHMLA", "8q1s1k", num_kv_splits=4))
    with pytest.raises(plan.PlanError, match="prefill_backend"):
        plan.make_plan(make_case("TRITON_MLA", "8q1s1k", prefill_backend="fa9"))
    with pytest.raises(plan.PlanError, match="kv_cache_dtype"):
        plan.make_plan(make_case("TRITON_MLA", "8q1s1k", kv="int4"))


def test_graphs_on_a_mixed_batch_are_refused() -> None:
    with pytest.raises(plan.PlanError) as err:
        plan.make_plan(make_case("FLASH_ATTN_MLA", "q1ks4k_64q1s4k", cuda_graphs=True,
                                 reorder_batch_threshold=512))
    assert err.value.status is Status.UNSUPPORTED


def test_prefill_capability_from_0_21_on(vllm_026) -> None:
    assert "cudnn prefill does not exist in vLLM 0.26" in plan.prefill_capability_refusal("cudnn", "9.0")
    assert "needs compute capability 10.x" in plan.prefill_capability_refusal("trtllm", "9.0")
    assert plan.prefill_capability_refusal("fa3", "9.0") is None


def test_prefill_overrides_and_verification(vllm_020) -> None:
    assert plan.prefill_overrides("auto") == {}
    assert plan.prefill_overrides("fa2")["flash_attn_version"] == 2
    assert plan.prefill_overrides("fa3")["disable_flashinfer_prefill"] is True
    assert plan.prefill_overrides("flashinfer") == {"disable_flashinfer_prefill": False,
                                                    "use_cudnn_prefill": False,
                                                    "use_trtllm_ragged_deepseek_prefill": False}
    assert plan.prefill_overrides("cudnn")["use_cudnn_prefill"] is True
    assert plan.prefill_overrides("trtllm")["use_trtllm_ragged_deepseek_prefill"] is True
    with pytest.raises(plan.PlanError):
        plan.prefill_overrides("fa9")
    assert plan.resolved_prefill(False, False, False, 3) == "fa3"
    assert plan.resolved_prefill(True, False, True, 3) == "trtllm"  # the impl's own preference order
    assert plan.prefill_mismatch("fa3", "fa3") is None and plan.prefill_mismatch("auto", "fa2") is None
    assert "fell back to fa2" in plan.prefill_mismatch("fa3", "fa2")


def test_choose_layers() -> None:
    l2, free = 50 << 20, 70 << 30
    assert plan.choose_layers(1 << 20, l2, free, 8) == 8  # tiny caches: the cap
    assert plan.choose_layers(151 << 20, l2, free, 8) == 1  # 151 MB already exceeds 3 x L2
    assert plan.choose_layers(40 << 20, l2, free, 8) == 4
    assert plan.choose_layers(19 << 30, l2, free, 8) == 1
    assert plan.choose_layers(10 << 30, l2, 30 << 30, 8, l2_factor=100) == 1  # memory bound
    assert plan.choose_layers(100 << 30, l2, 30 << 30, 8) == 1  # at least one: OOM is reported as such


def test_order_requests_puts_decodes_first() -> None:
    reqs = parse("q1ks4k_2q1s4k_q512_q4s1k").requests  # extend, 2 decodes, fresh prefill, spec decode
    assert plan.order_requests(reqs, 4) == (1, 2, 4, 0, 3)
    assert plan.order_requests(reqs, 1) == (1, 2, 0, 4, 3)


def test_triton_auto_splits_and_block_sizes() -> None:
    assert plan.triton_auto_splits(4096, 132) == 8
    assert plan.triton_auto_splits(65536, 132) == 128
    assert plan.triton_auto_splits(100, 132) == 1
    assert plan.triton_auto_splits(1 << 20, 16) == 32

    class MultipleOf:
        def __init__(self, base: int) -> None:
            self.base = base

    assert plan.block_size_for([64]) == 64  # FlashMLA
    assert plan.block_size_for([128]) == 128  # CUTLASS
    assert plan.block_size_for([MultipleOf(16)]) == 64  # FA MLA, Triton
    assert plan.block_size_for([32, 64]) == 64  # FlashInfer MLA


def test_failure_classification() -> None:
    assert plan.classify_failure(["OutOfMemoryError", "RuntimeError"], "CUDA out of memory") == (Status.OOM,
                                                                                                 False)
    assert plan.classify_failure(["NotImplementedError"], "x") == (Status.UNSUPPORTED, False)
    assert plan.classify_failure(["RuntimeError"], "CUDA error: an illegal memory access") == (Status.ERROR,
                                                                                               True)
    assert plan.classify_failure(["ValueError"], "boom") == (Status.ERROR, False)
    assert one_line("a\nb  c", 10) == "a b c" and len(one_line("x" * 500)) == 300


# -- the watchdog, with fake workers ------------------------------------------------------------------
FAKE_ENV = Environment("vllm", "NVIDIA H100 80GB HBM3", "9.0", 132)
OK = Measurement(Status.OK, (1.0, 1.1, 0.9, 1.0, 1.05))


def fake_worker(conn, options) -> None:
    """Answers like the real worker; the request count of a case's shape picks a misbehaviour."""
    started = False
    while True:
        try:
            op, payload = conn.recv()
        except EOFError:
            return
        if not started and op in ("environment", "backends", "measure", "measure_paired"):  # torch/vLLM are up
            conn.send(("started", None, False))
            started = True
        if op == "close":
            conn.send(("ok", None, True))
            return
        if op == "environment":
            conn.send(("ok", FAKE_ENV, False))
        elif op == "backends":
            conn.send(("ok", (BackendStatus("fa2", "prefill", True),), False))
        elif op == "stats":
            conn.send(("ok", {"pid": os.getpid()}, False))
        elif op == "measure":
            n = len(payload.shape.requests)
            if n == 2:
                time.sleep(3600)  # hang
            elif n == 3:
                os._exit(7)  # a crash
            elif n == 4:
                os.kill(os.getpid(), signal.SIGSEGV)
            elif n == 5:
                time.sleep(1.5)  # slow, like a first JIT compile
            elif n == 6:
                conn.send(("ok", (Measurement.failed(Status.ERROR, "CUDA error: illegal memory access"), {}),
                           True))
                os._exit(3)
            elif n == 7:  # the default config's own run crashes on this shape
                conn.send(("ok", (Measurement.failed(
                    Status.ERROR, "reference (default config): RuntimeError: illegal memory access"), {}), True))
                os._exit(3)
            elif n == 8:  # torch/vLLM cannot start here (the H200's "CUDA driver initialization failed")
                conn.send(("unusable", "import torch/vllm: RuntimeError: CUDA driver initialization failed", True))
                os._exit(3)
            conn.send(("ok", (OK, {"total_s": 0.01}), False))
        elif op == "measure_paired":
            n = len(payload[0].shape.requests)
            if n == 2:
                time.sleep(3600)
            elif n == 3:
                os._exit(7)
            arms = (OK,) * len(payload)  # one arm per case the parent sent: refused ones never arrive
            pairs = tuple(PairStat(1.0, 1.0 + 0.1 * i, (1.0, 1.2), 10) for i in range(len(payload)))
            conn.send(("ok", (PairedMeasurement(arms, pairs, (), (("paired", "interleaved"),)),
                              {"total_s": 0.01}), False))


@pytest.fixture
def fake_runner():
    runner = VllmRunner(worker_target=fake_worker, timeout_s=1.0, first_timeout_s=20.0)
    yield runner
    runner.close()


def _case(n: int, backend: str = "TRITON_MLA") -> Case:
    return make_case(backend, f"{n}q1s1k" if n > 1 else "q1s1k")


@pytest.mark.slow
def test_hang_becomes_timeout_and_the_next_case_works(fake_runner) -> None:
    assert fake_runner.measure(_case(1)).ok
    t0 = time.monotonic()
    m = fake_runner.measure(_case(2))
    assert m.status is Status.TIMEOUT and "1 s" in m.message and time.monotonic() - t0 < 10
    assert fake_runner.measure(_case(1)).ok
    assert fake_runner.worker_starts == 2


@pytest.mark.slow
@pytest.mark.parametrize("n, expected", [(3, "exited with code 7"), (4, f"signal {int(signal.SIGSEGV)}")])
def test_crash_becomes_error_and_the_next_case_works(fake_runner, n, expected) -> None:
    assert fake_runner.measure(_case(1)).ok
    m = fake_runner.measure(_case(n))
    assert m.status is Status.ERROR and expected in m.message and "\n" not in m.message
    assert fake_runner.measure(_case(1)).ok and fake_runner.worker_starts == 2


@pytest.mark.slow
def test_poisoned_worker_is_replaced(fake_runner) -> None:
    pid = fake_runner.stats()["pid"]
    assert fake_runner.measure(_case(6)).status is Status.ERROR
    assert fake_runner.measure(_case(1)).ok and fake_runner.stats()["pid"] != pid


@pytest.mark.slow
def test_a_shape_whose_default_config_keeps_crashing_stops_costing_worker_restarts(fake_runner) -> None:
    ms = [fake_runner.measure(make_case("TRITON_MLA", "7q1s1k", num_kv_splits=k)) for k in (1, 2, 4, 8)]
    assert all(m.status is Status.ERROR and m.message.startswith("reference (default config)") for m in ms)
    assert fake_runner.worker_starts == 2  # two tries, then answered without a worker
    assert "failed 2 times on this shape: not run again" in ms[-1].message
    assert fake_runner.measure(_case(1)).ok  # other shapes are measured as before


@pytest.mark.slow
def test_first_use_of_a_config_gets_the_long_timeout(fake_runner) -> None:
    assert fake_runner.measure(_case(5)).ok  # new engine key: 20 s allowed
    assert fake_runner.measure(_case(5)).status is Status.TIMEOUT  # seen: 1 s allowed


@pytest.mark.slow
def test_refusals_never_reach_the_worker(fake_runner) -> None:
    m = fake_runner.measure(_case(1, "CUTLASS_MLA"))
    assert m.status is Status.UNSUPPORTED and m.message == "CUTLASS_MLA needs compute capability 10.x " \
        "(this GPU: 9.0)"
    m = fake_runner.measure(make_case("TRITON_MLA", "q1s1k", prefill_backend="flashinfer"))
    assert m.status is Status.UNSUPPORTED and "10.x" in m.message
    m = fake_runner.measure(make_case("TRITON_MLA", "q1s1k", prefill_backend="fa3"))
    assert m.status is Status.UNSUPPORTED and "does not know prefill backend fa3" in m.message
    m = fake_runner.measure(make_case("TRITON_MLA", "q1s1k", bogus=3))
    assert m.status is Status.ERROR and "bogus" in m.message
    assert fake_runner.environment() is fake_runner.environment()  # cached


@pytest.mark.slow
def test_close_stops_the_worker_and_keeps_the_log_only_after_failures(fake_runner) -> None:
    fake_runner.measure(_case(1))
    proc = fake_runner._holder["worker"].proc
    fake_runner.close()
    assert not proc.is_alive() and not os.path.exists(fake_runner.log_path)
    failing = VllmRunner(worker_target=fake_worker, timeout_s=1.0, first_timeout_s=20.0)
    try:
        assert failing.measure(_case(3)).status is Status.ERROR
    finally:
        failing.close()
    assert os.path.exists(failing.log_path)
    os.unlink(failing.log_path)


@pytest.mark.slow
def test_a_paired_recording_sends_only_the_arms_it_can_run_and_puts_the_refused_back(fake_runner) -> None:
    default = make_case("TRITON_MLA", "q1s1k")
    pm = fake_runner.measure_paired([default, _case(1, "CUTLASS_MLA"), make_case("TRITON_MLA", "q1s1k",
                                                                                  num_kv_splits=4)])
    assert [m.status for m in pm.arms] == [Status.OK, Status.UNSUPPORTED, Status.OK]
    assert pm.pairs[1] is None and pm.pairs[2].speedup == pytest.approx(1.1)  # the worker's second arm, put third
    refused = fake_runner.measure_paired([_case(1, "CUTLASS_MLA"), default])
    assert not any(m.ok for m in refused.arms) and "nothing to compare with" in refused.arms[1].message


@pytest.mark.slow
def test_a_paired_recording_that_hangs_or_crashes_fails_every_arm_and_the_next_works(fake_runner) -> None:
    assert fake_runner.measure_paired([_case(1), _case(1)]).ok  # the engine is known: no first-use timeout
    t0 = time.monotonic()
    hung = fake_runner.measure_paired([_case(2), _case(2)])
    assert all(m.status is Status.TIMEOUT for m in hung.arms) and "2 s" in hung.arms[0].message  # 1 s per arm
    assert time.monotonic() - t0 < 15
    crashed = fake_runner.measure_paired([_case(3), _case(3)])
    assert all(m.status is Status.ERROR and "exited with code 7" in m.message for m in crashed.arms)
    assert fake_runner.measure_paired([_case(1), _case(1)]).ok and fake_runner.worker_starts == 3


def test_arms_with_the_same_engine_get_their_own_instances() -> None:
    a = plan.make_plan(make_case("FLASH_ATTN_MLA", "64q1s4k")).engine
    b = plan.make_plan(make_case("FLASH_ATTN_MLA", "64q1s4k", prefill_backend="fa2")).engine
    assert plan.arm_slots([a, a, b, a, b]) == [0, 1, 0, 2, 1]


# -- on the GPU ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gpu_runner():
    runner = VllmRunner(warmup=3, samples=10)
    yield runner
    runner.close()


@pytest.mark.gpu
class TestVllmRunnerContract(RunnerContract):
    @pytest.fixture
    def runner(self, gpu_runner):
        return gpu_runner

    @pytest.fixture
    def ok_case(self):
        return make_case("FLASH_ATTN_MLA", "8q1s1k")

    @pytest.fixture
    def refused_case(self):
        return make_case("CUTLASS_MLA", "8q1s1k")


@pytest.mark.gpu
def test_a_paired_recording_gives_each_arm_its_own_builder_and_graph(gpu_runner) -> None:
    """FLASH_ATTN_MLA under full graphs: vLLM's default, cap 1 and the default built again, in one recording; three
    engine instances of one EngineKey, each arm's metadata its own (cap 1 is what its metadata says)."""
    before = gpu_runner.stats()
    default = make_case("FLASH_ATTN_MLA", "64q1s4k", dims=get_model("deepseek-v3", 1))
    cap1 = make_case("FLASH_ATTN_MLA", "64q1s4k", dims=get_model("deepseek-v3", 1), max_num_splits=1)
    pm = gpu_runner.measure_paired([default, cap1, default])
    assert pm.ok, [m.message for m in pm.arms]
    after = gpu_runner.stats()
    assert after["engine_builds"] - before.get("engine_builds", 0) >= 3
    d = [dict(m.details) for m in pm.arms]
    assert [x["fa_num_splits"] for x in d] == ["32", "1", "32"] and all(x["timing"] == "graph" for x in d)
    assert all(m.rel_err is not None and m.rel_err < 2e-2 for m in pm.arms[1:])
    rec = dict(pm.details)
    assert rec["paired"] == "interleaved" and int(rec["blocks"]) >= 10 and pm.gpu_s > 0
    assert pm.pairs[2].ci is not None and 0.97 < pm.pairs[2].speedup < 1.03  # the default against itself
    assert sorted(set(pm.order)) == [0, 1, 2] and len(pm.order) == sum(len(m.samples_ms) for m in pm.arms)


@pytest.mark.gpu
def test_eager_arms_each_get_their_own_triton_split_count(gpu_runner) -> None:
    arms = [make_case("TRITON_MLA", "8q1s4k"), make_case("TRITON_MLA", "8q1s4k", num_kv_splits=4),
            make_case("TRITON_MLA", "8q1s4k", num_kv_splits=1)]
    pm = gpu_runner.measure_paired(arms)
    assert pm.ok, [m.message for m in pm.arms]
    splits = [dict(m.details)["num_kv_splits"] for m in pm.arms]
    assert splits[1:] == ["4", "1"] and int(splits[0]) > 0  # the default's: vLLM's heuristic
    assert all(dict(m.details)["timing"] == "eager" for m in pm.arms)


@pytest.mark.gpu
def test_triton_split_change_rebuilds_nothing(gpu_runner) -> None:
    first = gpu_runner.measure(make_case("TRITON_MLA", "8q1s4k", num_kv_splits=4))
    assert first.ok, first.message
    before = gpu_runner.stats()
    forced = gpu_runner.measure(make_case("TRITON_MLA", "8q1s4k", num_kv_splits=16))
    after = gpu_runner.stats()
    assert forced.ok, forced.message
    assert dict(forced.details)["num_kv_splits"] == "16"
    assert forced.rel_err is not None and forced.rel_err < 2e-2
    for key in ("engine_builds", "metadata_builds", "input_builds"):
        assert after.get(key, 0) == before.get(key, 0), key


@pytest.mark.gpu
def test_a_measurement_says_how_stable_it_was_and_at_which_clocks(gpu_runner) -> None:
    m = gpu_runner.measure(make_case("FLASH_ATTN_MLA", "64q1s4k"))
    assert m.ok, m.message
    d = dict(m.details)
    assert d["stationary"] in ("yes", "no") and d["drift"].endswith("%") and int(d["samples"]) == len(m.samples_ms)
    assert len(m.samples_ms) >= 10  # the count, and more until 50 ms of GPU time
    assert int(d["samples"]) * m.median_ms * int(d["layers"]) >= 40.0 or len(m.samples_ms) == 400
    assert ("sm_clock_mhz" in d and d["clock_events"]) or d["nvml"].startswith("nvml")


@pytest.mark.gpu
def test_prefill_fa2_and_fa3(gpu_runner) -> None:
    for fa in ("fa2", "fa3"):
        m = gpu_runner.measure(make_case("FLASH_ATTN_MLA", "2q256s1k", prefill_backend=fa))
        assert m.ok, f"{fa}: {m.message}"
        assert dict(m.details)["prefill"] == fa and m.rel_err < 2e-2


@pytest.mark.gpu
@pytest.mark.parametrize("threshold, decode_tokens", [(512, "32"), (1, "0")])
def test_spec_decode_through_both_pipelines(gpu_runner, threshold, decode_tokens) -> None:
    m = gpu_runner.measure(make_case("FLASH_ATTN_MLA", "8q4s1k", reorder_batch_threshold=threshold,
                                     cuda_graphs=False))
    assert m.ok, m.message
    assert dict(m.details)["decode_tokens"] == decode_tokens and m.rel_err < 2e-2


@pytest.mark.gpu
def test_oom_is_data(gpu_runner) -> None:
    # 1024 x 160k tokens of latent cache (193 GB): beyond what a batch spec accepts, so built by hand
    # (not TRITON_MLA: vLLM <= 0.24 refuses a cache this large before allocating it, see the next test)
    huge = Case("FLASHMLA", Shape((Request(1, 160 * 1024),) * 1024), get_model("deepseek-v3", 1))
    m = gpu_runner.measure(huge)
    assert m.status is Status.OOM, m.message
    assert gpu_runner.measure(make_case("FLASHMLA", "8q1s1k")).ok  # memory was given back


@pytest.mark.gpu
def test_triton_mla_past_its_int32_kv_offsets_is_refused_not_run(gpu_runner) -> None:
    from mla_tune.vllm_adapters import installed_version, parse_version

    if parse_version(installed_version()) > (0, 24):
        pytest.skip("vLLM 0.25 and later address the KV cache in int64")
    # On the H200 with vLLM 0.20 this shape's kernel faulted, and the CUDA contexts of later workers failed.
    # FLASHMLA first: its inputs for the shape are then there already, and must not let TRITON_MLA through.
    assert gpu_runner.measure(make_case("FLASHMLA", "256q1s16k")).ok
    m = gpu_runner.measure(make_case("TRITON_MLA", "256q1s16k"))
    assert m.status is Status.UNSUPPORTED and "int32" in m.message, m.message
    assert gpu_runner.measure(make_case("TRITON_MLA", "128q1s16k")).ok  # the largest that fits still runs


@pytest.mark.gpu
def test_timeout_is_data() -> None:
    runner = VllmRunner(warmup=3, samples=5)
    try:
        runner.environment()  # start the worker under the normal limits
        runner.options = replace(runner.options, timeout_s=0.5, first_timeout_s=0.5)
        m = runner.measure(make_case("FLASHMLA", "8q1s1k"))  # engine build + JIT take longer
        assert m.status is Status.TIMEOUT, m.message
    finally:
        runner.close()


@pytest.mark.gpu
def test_a_worker_that_cannot_start_cuda_stops_the_run_instead_of_failing_the_config(monkeypatch) -> None:
    # The H200 case: after TRITON_MLA faults, new processes failed "CUDA driver initialization". Here the worker is
    # started without a visible GPU: no measurement may come back (it would be recorded as this config's failure).
    runner = VllmRunner(warmup=3, samples=5)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    try:
        with pytest.raises(RunnerUnavailableError):
            runner.measure(make_case("FLASHMLA", "8q1s1k"))
    finally:
        runner.close()


def test_every_backend_has_facts_in_every_vllm_family() -> None:
    from mla_tune.vllm_adapters import FAMILIES

    for family in FAMILIES:
        assert set(family.backends) == set(BACKENDS), family.family


@pytest.mark.slow
def test_a_gpu_that_cannot_start_stops_the_runner_instead_of_failing_the_config(fake_runner) -> None:
    with pytest.raises(RunnerUnavailableError, match="GPU cannot be used here: import torch/vllm.*CUDA driver"):
        fake_runner.measure(_case(8))
    assert fake_runner.measure(_case(1)).ok  # a fresh worker, once the host recovers


def test_the_worker_answers_unusable_when_torch_or_vllm_cannot_start(monkeypatch) -> None:
    import types as pytypes

    from mla_tune.runners import _vllm_worker
    from mla_tune.runners._vllm_plan import RunnerOptions

    class Broken:
        def __init__(self, options):
            raise RuntimeError("CUDA driver initialization failed, you might not have a CUDA gpu.")

    monkeypatch.setitem(sys.modules, "mla_tune.runners._vllm_session", pytypes.SimpleNamespace(Session=Broken))
    status, message, exiting = _vllm_worker._Worker(RunnerOptions()).handle("measure", _case(1))
    assert (status, exiting) == ("unusable", True)
    assert message == "import torch/vllm: RuntimeError: CUDA driver initialization failed, you might not have a CUDA gpu."


def never_starts(conn, options) -> None:
    """A worker on a host where CUDA no longer comes up: it crashes, or hangs, before torch/vLLM are up."""
    op, payload = conn.recv()
    if options.seed == 1:
        time.sleep(3600)
    os._exit(11)


@pytest.mark.slow
@pytest.mark.parametrize("seed, what", [(0, "worker exited with code 11"), (1, "no answer")])
def test_a_worker_that_dies_or_hangs_before_torch_is_up_stops_the_runner(seed, what) -> None:
    runner = VllmRunner(worker_target=never_starts, timeout_s=1.0, first_timeout_s=1.0, seed=seed)
    runner._env = FAKE_ENV  # an earlier worker answered: this one is a restart, after a crash, on a broken host
    try:
        with pytest.raises(RunnerUnavailableError, match=f"while starting torch/vLLM \\({what}\\)"):
            runner.measure(_case(1))
    finally:
        runner.close()
    if os.path.exists(runner.log_path):
        os.unlink(runner.log_path)


def test_the_int32_refusal_holds_when_another_backend_built_the_shapes_inputs():
    """The inputs of a shape are cached across backends: TRITON_MLA must be refused even when FLASHMLA built them.
    Run in a subprocess with torch stubbed (the session module imports torch), so nothing leaks into other tests."""
    code = """
import sys, types, collections
from unittest import mock
sys.modules["torch"] = mock.MagicMock()
from mla_tune.runners import _vllm_session as vs
from mla_tune.batch_spec import parse
from mla_tune.models import get_model
from mla_tune.types import Case
vs.installed_version = lambda: "0.20.0"
vs.tm.make_inputs = lambda *a, **k: object()
s = object.__new__(vs.Session); s._inputs = None; s.counters = collections.Counter(); s.device = None
s.options = types.SimpleNamespace(seed=0, layers=4, l2_factor=1, mem_fraction=.9)
shape, dims = parse("256q1s16k"), get_model("deepseek-v3", 1)
def engine(b): return types.SimpleNamespace(key=types.SimpleNamespace(backend=b, kv_cache_dtype="auto"), block_size=64)
s.inputs(Case("FLASHMLA", shape, dims), engine("FLASHMLA"))
try:
    s.inputs(Case("TRITON_MLA", shape, dims), engine("TRITON_MLA"))
except vs.eng.UnsupportedCase as e:
    print("refused:", e)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("refused:") and "int32" in out.stdout
