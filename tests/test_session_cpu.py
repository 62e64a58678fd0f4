"""The vLLM runner's measuring session (``_vllm_session.Session``) on CPU: torch, NVML and every engine and timing
function the session calls are fakes, the recording runs on a virtual clock (``FakeTimer``), so what is left is the
session's own logic: caches, arm slots, failures kept as data or propagated, numerics gate, timing details."""

from __future__ import annotations

import contextlib
import importlib
import math
import sys
import types
from dataclasses import dataclass
from typing import Any

import pytest

from mla_tune.batch_spec import parse
from mla_tune.models import get_model
from mla_tune.runners._vllm_plan import RunnerOptions, make_plan, space_of
from mla_tune.types import Case, Measurement, Status, freeze_params

from .fakes import FakeTimer

DIMS = get_model("deepseek-v3", tp=8)
SPEC = "8q1s4k"  # a uniform decode batch: FLASH_ATTN_MLA replays it as a full CUDA graph by default
LAYERS = 3  # KV caches per timed sample: a replay advances the clock by 3 x the arm's latency
BLOCKS = 4  # every paired recording here runs exactly 4 blocks (each arm twice per block)
BASE_OPTIONS = dict(pair_min_blocks=BLOCKS, pair_min_time_ms=0.0, pair_max_blocks=BLOCKS, layers=LAYERS, device=1)
SESSION_MODULES = ("mla_tune.runners._vllm_session", "mla_tune.runners._vllm_engine",
                   "mla_tune.runners._vllm_timing")
BF16, FP8 = "torch.bfloat16", "torch.float8_e4m3fn"  # the fake torch's dtypes: sentinels the fakes compare
POISON = "CUDA error: an illegal memory access was encountered"


class OutOfMemoryError(RuntimeError):
    """Named like torch's: classify_failure recognizes OOM by the class name."""


# -- fake torch and NVML ----------------------------------------------------------------------------
@dataclass(frozen=True)
class FakeDevice:
    type: str
    index: int | None = None


def fake_torch() -> types.ModuleType:
    """What the session, engine and timing modules touch of torch at import and in the session's own code."""
    torch = types.ModuleType("torch")
    torch.__version__ = "2.11.0+fake"
    torch.bfloat16 = BF16
    torch.device = FakeDevice
    torch.version = types.SimpleNamespace(cuda="13.0")
    props = types.SimpleNamespace(name="NVIDIA H100 80GB HBM3", major=9, minor=0, multi_processor_count=132,
                                  total_memory=80 * 2**30, L2_cache_size=50 * 2**20, pci_domain_id=0,
                                  pci_bus_id=0x1A, pci_device_id=0)
    calls: list[tuple] = []
    torch.cuda = types.SimpleNamespace(
        calls=calls, set_device=lambda d: calls.append(("set_device", d)),
        synchronize=lambda d=None: calls.append(("synchronize", d)),
        empty_cache=lambda: calls.append(("empty_cache",)),
        memory_allocated=lambda d=None: 3 * 2**29, get_device_properties=lambda d: props)
    return torch


class FakeNvml:
    """pynvml on a virtual GPU: the first clock reading is clean, every later one is under a power cap (``capped``)."""

    NVML_CLOCK_SM, NVML_CLOCK_MEM, NVML_TEMPERATURE_GPU = 0, 1, 0

    def __init__(self) -> None:
        self.reads = 0
        self.bus_ids: list[str] = []
        self.broken = False
        self.capped = True  # False: a GPU that never hits a clock event

    def nvmlInit(self) -> None:
        pass

    def nvmlSystemGetDriverVersion(self) -> bytes:
        return b"580.65.06"  # older pynvml returns bytes: the session decodes them

    def nvmlDeviceGetHandleByPciBusId(self, bus: str) -> str:
        if self.broken:
            raise RuntimeError("NVML Shared Library Not Found")
        self.bus_ids.append(bus)
        return "handle"

    def nvmlDeviceGetClockInfo(self, handle: str, which: int) -> int:
        if which == self.NVML_CLOCK_SM:
            self.reads += 1  # Clocks.read asks for the SM clock first
            return 1980 if self.reads == 1 else 1755
        return 2619

    def nvmlDeviceGetTemperature(self, handle: str, which: int) -> int:
        return 60 if self.reads == 1 else 71

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: str) -> int:
        return 0x4 if self.capped and self.reads > 1 else 0  # sw_power_cap


# -- fake engines, inputs, metadata, graphs ---------------------------------------------------------
@dataclass(frozen=True)
class Output:
    """An attention output, named by the arm that made it; ``stored`` once it is a CPU reference copy."""

    label: str
    stored: bool = False


class FakeEngine:
    def __init__(self, key: Any, block_size: int) -> None:
        self.key, self.block_size, self.prefill = key, block_size, "fa3"
        self.impl = types.SimpleNamespace(kv_b_proj=types.SimpleNamespace(weight="kv_b_proj.weight"))

    def context(self) -> Any:
        return contextlib.nullcontext()


@dataclass
class FakeBatch:
    label: str
    engine: FakeEngine
    meta: Any
    num_decode_tokens: int
    num_prefill_tokens: int = 0
    threshold: int = 0


class FakeGraph:
    def __init__(self, run: Any, label: str) -> None:
        self.run, self.label, self.replays = run, label, 0

    def replay(self) -> None:
        self.replays += 1
        self.run()  # the captured calls: the arm's forwards advance the virtual clock


class World:
    """The fakes of one test and what they saw. Arms are named (``label``) by their plan; each test says per label
    its latency per layer call, relative error against the reference, and where (phase) it fails."""

    def __init__(self, vs: Any, eng: Any, tm: Any, torch: Any, nvml: FakeNvml) -> None:
        self.vs, self.eng, self.tm, self.torch, self.nvml = vs, eng, tm, torch, nvml
        self.labels: dict[tuple, str] = {}
        self.latency: dict[str, float] = {}
        self.rel_errs: dict[str, float] = {}
        self.block_sizes: dict[Any, int] = {}  # EngineKey -> KV block size (64 where not set)
        self.failures: dict[tuple[str, str], list] = {}  # (phase, label) -> [exception, times left or None]
        self.phase = "forward"  # a forward outside warm-up and capture: numerics (or a recorded replay)
        self.last = ""
        self.timers: list[FakeTimer] = []
        self.engines_built: list[Any] = []  # EngineKeys, in build order
        self.engine_objects: list[FakeEngine] = []
        self.batch_engines: dict[str, FakeEngine] = {}  # label -> the engine its metadata was last built with
        self.model_dirs: list[Any] = []
        self.kv_b_projs: list[Any] = []
        self.inputs_made: list[dict] = []
        self.captures: list[FakeGraph] = []
        self.compared: list[tuple[Output, Output]] = []
        self.sampled: list[tuple] = []
        self.samples = [0.5, 0.5, 0.6]

    # -- test helpers
    def case(self, label: str, backend: str = "FLASH_ATTN_MLA", spec: str = SPEC, kv: str = "auto",
             latency: float = 1.0, rel_err: float = 1e-3, **params: Any) -> Case:
        shape = parse(spec)
        config = space_of(backend, kv).default_config(shape)
        config.update(params)
        case = Case(backend, shape, DIMS, freeze_params(config), kv)
        self.labels[self._key(make_plan(case))] = label
        self.latency[label], self.rel_errs[label] = latency, rel_err
        return case

    def fail(self, phase: str, label: str, exc: BaseException, times: int | None = None) -> None:
        self.failures[(phase, label)] = [exc, times]

    def session(self, **options: Any) -> Any:
        return self.vs.Session(RunnerOptions(**{**BASE_OPTIONS, **options}), timer=self.new_timer)

    def paired(self, session: Any, cases: list[Case], plans: list | None = None) -> Any:
        plans = plans if plans is not None else [make_plan(c) for c in cases]
        return session.measure_paired(cases, plans)

    @staticmethod
    def _key(plan: Any) -> tuple:
        return plan.engine.backend, plan.engine.kv_cache_dtype, plan.params

    def label_of(self, plan: Any) -> str:
        return self.labels[self._key(plan)]  # strict: an arm no test named is a bug in the test

    def _check(self, phase: str, label: str) -> None:
        hit = self.failures.get((phase, label))
        if hit is None or hit[1] == 0:
            return
        if hit[1] is not None:
            hit[1] -= 1
        raise hit[0]

    @contextlib.contextmanager
    def _in(self, phase: str) -> Any:
        self.phase = phase
        try:
            yield
        finally:
            self.phase = "forward"

    # -- the fakes
    def new_timer(self) -> FakeTimer:
        self.timers.append(FakeTimer())
        return self.timers[-1]

    def write_model_dir(self, dims: Any) -> str:
        self.model_dirs.append(dims)
        return f"/fake/{dims.label}"

    def make_kv_b_proj(self, dims: Any, device: Any, seed: int) -> Any:
        self.kv_b_projs.append(dims)
        return types.SimpleNamespace(weight="w")

    def build_engine(self, key: Any, model_dir: str, kv_b_proj: Any, device: Any, session: Any) -> FakeEngine:
        self.engines_built.append(key)
        self.engine_objects.append(FakeEngine(key, self.block_sizes.get(key, 64)))
        return self.engine_objects[-1]

    def make_inputs(self, requests: Any, dims: Any, block_size: int, dtype: Any, device: Any, seed: int,
                    layers: int, l2_factor: float, mem_fraction: float) -> Any:
        self.inputs_made.append(dict(requests=requests, block_size=block_size, dtype=dtype, layers=layers))
        return types.SimpleNamespace(batches={}, caches=[f"cache{i}" for i in range(layers)], layers=layers)

    def build_batch(self, engine: FakeEngine, inputs: Any, plan: Any, device: Any) -> FakeBatch:
        label = self.label_of(plan)
        self._check("metadata", label)
        self.batch_engines[label] = engine
        # where FLASH_ATTN_MLA's metadata says what ran (the adapter's metadata_reports): the split cap asked for
        splits = dict(plan.params).get("max_num_splits")
        meta = types.SimpleNamespace(decode=types.SimpleNamespace(max_num_splits=splits))
        return FakeBatch(label, engine, meta, num_decode_tokens=8, threshold=plan.threshold or 0)

    def apply_call_settings(self, engine: FakeEngine, plan: Any) -> None:
        pass

    def forward(self, engine: FakeEngine, batch: FakeBatch, cache: str) -> Output:
        if batch.engine is not engine:  # an arm must run on the engine (slot) its metadata was built with
            raise AssertionError(f"{batch.label}: metadata of another engine instance")
        self._check(self.phase, batch.label)
        if self.timers:
            self.timers[-1].now += self.latency[batch.label]
        self.last = batch.label
        return Output(batch.label)

    def compose_output(self, batch: FakeBatch, o: Output, inputs: Any, weight: str) -> Output:
        assert weight == "kv_b_proj.weight"
        return o

    def store_reference(self, out: Output) -> Output:
        return Output(out.label, stored=True)

    def relative_error(self, out: Output, ref: Output) -> float:
        self.compared.append((out, ref))
        return self.rel_errs[out.label]

    def warm_up(self, run: Any, policy: Any) -> int:
        with self._in("warmup"):
            run()
            run()
        return 2

    def capture(self, run: Any) -> FakeGraph:
        with self._in("capture"):
            run()
        graph = FakeGraph(run, self.last)
        self.captures.append(graph)
        return graph

    def sample(self, run: Any, calls: int, graph: bool, policy: Any, read_clocks: Any) -> Any:
        self.sampled.append((calls, graph, policy))
        return self.tm.Recording(list(self.samples), 1, [read_clocks(), read_clocks()])


def install(monkeypatch: pytest.MonkeyPatch) -> World:
    """The session modules imported fresh against a fake torch, engine and timing functions replaced by a World's;
    ``monkeypatch``'s undo leaves sys.modules and the package attributes as before (other tests check what happens
    without torch)."""
    import mla_tune.runners as runners

    torch, nvml = fake_torch(), FakeNvml()
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    for name in SESSION_MODULES:
        # setitem/setattr record the original (or its absence) for the undo; the entry itself must go for the import
        monkeypatch.setitem(sys.modules, name, None)
        del sys.modules[name]
        attr = name.rsplit(".", 1)[1]
        monkeypatch.setattr(runners, attr, None, raising=False)
        delattr(runners, attr)
    vs = importlib.import_module(SESSION_MODULES[0])
    eng, tm = vs.eng, vs.tm
    w = World(vs, eng, tm, torch, nvml)
    for name in ("write_model_dir", "build_engine", "build_batch", "forward", "apply_call_settings"):
        monkeypatch.setattr(eng, name, getattr(w, name))
    monkeypatch.setattr(eng, "vllm_version", lambda: "0.20.0")
    monkeypatch.setattr(eng, "fp8_dtype", lambda: FP8)
    for name in ("make_kv_b_proj", "make_inputs", "compose_output", "store_reference", "relative_error", "warm_up",
                 "capture", "sample"):
        monkeypatch.setattr(tm, name, getattr(w, name))
    monkeypatch.setattr(vs, "installed_version", lambda: None)  # no vLLM here: no TRITON int32 refusal
    return w


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> World:
    return install(monkeypatch)


def three_arms(world: World) -> list[Case]:
    """vLLM's default (graph), a faster split cap on the same engine key (graph), a slower eager arm."""
    return [world.case("default", latency=1.0), world.case("splits16", latency=0.9, max_num_splits=16),
            world.case("eager", latency=1.2, cuda_graphs=False)]


def test_the_fake_torch_is_gone_from_sys_modules_afterwards():
    import mla_tune.runners as runners

    before = {name: sys.modules.get(name) for name in ("torch", "pynvml") + SESSION_MODULES}
    attrs = {name: getattr(runners, name.rsplit(".", 1)[1], None) for name in SESSION_MODULES}
    with pytest.MonkeyPatch.context() as mp:
        w = install(mp)
        assert w.eng.torch is w.torch and w.tm.torch is w.torch  # imported against the fake, not a cached module
        s = w.session()
        assert w.torch.cuda.calls == [("set_device", FakeDevice("cuda", 1))]
        assert s.stats()["gpu_allocated_gib"] == 1.5
        assert sys.modules[SESSION_MODULES[0]] is w.vs and runners._vllm_session is w.vs
    assert {name: sys.modules.get(name) for name in before} == before
    assert {name: getattr(runners, name.rsplit(".", 1)[1], None) for name in SESSION_MODULES} == attrs


# -- 1: a paired recording ---------------------------------------------------------------------------
def test_paired_arms_are_timed_at_their_own_latency_on_their_own_engine_instances(world):
    cases = three_arms(world)
    s = world.session()
    pm, phases = world.paired(s, cases)
    assert pm.ok
    for arm, ms in zip(pm.arms, (1.0, 0.9, 1.2)):
        assert arm.samples_ms == pytest.approx([ms] * 2 * BLOCKS)  # per layer call: the replay timed LAYERS calls
    assert [p.speedup for p in pm.pairs] == pytest.approx([1.0, 1 / 0.9, 1 / 1.2])
    assert pm.pairs[1].blocks == BLOCKS and pm.pairs[1].reference_ms == pytest.approx(1.0)
    assert len(pm.order) == 3 * 2 * BLOCKS and set(pm.order) == {0, 1, 2}
    d = dict(pm.details)
    assert d["paired"] == "interleaved" and d["blocks"] == str(BLOCKS)
    assert d["gpu_s"] == f"{BLOCKS * 2 * (1.0 + 0.9 + 1.2) * LAYERS / 1e3:.4g}"
    # arm_slots: the default and splits16 share an EngineKey, yet each got its own instance
    key_graph, key_eager = make_plan(cases[0]).engine, make_plan(cases[2]).engine
    assert make_plan(cases[1]).engine == key_graph
    assert world.engines_built == [key_graph, key_graph, key_eager]
    assert s.counters["engine_builds"] == 3 and s.stats()["engines_cached"] == 3
    assert [world.batch_engines[label] for label in ("default", "splits16", "eager")] == world.engine_objects
    # the graphed arms were captured once each and replayed for every sample; the eager arm ran its own calls,
    # draining the device before each of its samples
    assert [(g.label, g.replays) for g in world.captures] == [("default", 2 * BLOCKS), ("splits16", 2 * BLOCKS)]
    assert len(world.timers) == 1 and world.timers[0].drains == 2 * BLOCKS
    timing = [dict(a.details)["timing"] for a in pm.arms]
    assert timing == ["graph", "graph", "eager"]
    # each arm's details come from its own metadata (the split cap it ran with) and the shared inputs
    assert [dict(a.details)["fa_num_splits"] for a in pm.arms] == ["32", "16", "32"]
    assert all(dict(a.details)["warmup_calls"] == "2" and dict(a.details)["layers"] == str(LAYERS)
               for a in pm.arms)
    # every arm was checked against the default config's output, computed once
    assert [(o.label, r) for o, r in world.compared] == [(label, Output("default", stored=True))
                                                         for label in ("default", "splits16", "eager")]
    assert [a.rel_err for a in pm.arms] == [1e-3] * 3
    assert {"setup_s", "warmup_s", "timed_s", "total_s"} <= set(phases)


# -- 2: an arm's failure is that arm's ---------------------------------------------------------------
def test_arms_that_fail_before_the_recording_keep_their_failure_and_the_others_are_recorded(world):
    cases = [world.case("default", latency=1.0),
             world.case("refused", max_num_splits=16),
             world.case("bad numerics", max_num_splits=8, rel_err=0.5),
             world.case("bad warm-up", max_num_splits=4),
             world.case("unsupported", max_num_splits=1),
             world.case("good", max_num_splits=2, latency=0.8),
             world.case("nan", max_num_splits=64, rel_err=math.nan)]
    plans: list = [make_plan(c) for c in cases]
    plans[1] = Measurement.failed(Status.UNSUPPORTED, "prefill_backend fa4 needs SM100")
    world.fail("warmup", "bad warm-up", RuntimeError("kernel went sideways"))
    world.fail("metadata", "unsupported", world.eng.UnsupportedCase("FA3 cannot split this batch"))
    world.fail("metadata", "refused", AssertionError("a refused arm is never prepared"))
    pm, _ = world.paired(world.session(), cases, plans)
    arms = pm.arms
    assert arms[1] == plans[1]
    assert (arms[2].status, arms[2].rel_err) == (Status.ERROR, 0.5)
    assert arms[2].message == "numerics: rel err 0.5 vs the default config exceeds tol 0.02"
    assert dict(arms[2].details)["block_size"] == "64"  # what it ran with is kept with the failure
    assert (arms[3].status, arms[3].message) == (Status.ERROR, "warm-up (arm 3): RuntimeError: kernel went sideways")
    assert (arms[4].status, arms[4].message) == (Status.UNSUPPORTED, "FA3 cannot split this batch")
    assert arms[6].message == "numerics: output has NaN/Inf vs the default config exceeds tol 0.02"
    assert [m.ok for m in arms] == [True, False, False, False, False, True, False]
    assert [p is not None for p in pm.pairs] == [True, False, False, False, False, True, False]
    assert set(pm.order) == {0, 5} and len(pm.order) == 2 * 2 * BLOCKS  # numbered as the caller numbered the arms
    assert arms[5].samples_ms == pytest.approx([0.8] * 2 * BLOCKS)
    assert pm.pairs[5].speedup == pytest.approx(1 / 0.8)
    assert [g.label for g in world.captures] == ["default", "good"]  # failed arms got no graph


def test_a_reference_that_fails_without_spoiling_the_context_leaves_the_arms_unchecked_not_failed(world):
    cases = three_arms(world)
    world.fail("forward", "default", RuntimeError("reference broke"), times=1)  # the first forward: the reference
    s = world.session()
    pm, _ = world.paired(s, cases)
    assert pm.ok and [a.rel_err for a in pm.arms] == [None] * 3 and world.compared == []
    assert {dict(a.details)["numerics"] for a in pm.arms} == {"no reference: RuntimeError: reference broke"}
    assert s.counters["reference_builds"] == 0 and s.stats()["references_cached"] == 1  # the miss is cached too


# -- 3: the default arm failing fails them all -------------------------------------------------------
@pytest.mark.parametrize("where, message", [
    ("plan", "planned failure"),
    ("metadata", "build metadata: RuntimeError: no builder"),
    ("warmup", "warm-up (arm 0): RuntimeError: no builder"),
    ("capture", "CUDA graph capture (arm 0): RuntimeError: no builder"),
])
def test_when_the_default_arm_fails_every_arm_fails_with_nothing_to_compare_with(world, where, message):
    cases = three_arms(world)
    plans: list = [make_plan(c) for c in cases]
    if where == "plan":
        plans[0] = Measurement.failed(Status.ERROR, "planned failure")
    else:
        world.fail(where, "default", RuntimeError("no builder"))
    pm, _ = world.paired(world.session(), cases, plans)
    assert pm.arms[0].status is Status.ERROR and pm.arms[0].message == message
    for arm in pm.arms[1:]:
        assert arm.status is Status.ERROR
        assert arm.message == f"vLLM's default config failed, nothing to compare with: {message}"
    assert pm.pairs == (None, None, None)
    assert world.timers == []  # nothing was recorded


def test_a_backend_this_gpu_cannot_run_is_refused_in_a_paired_recording_without_building_anything(world):
    cases = [world.case("cutlass", backend="CUTLASS_MLA"), world.case("cutlass 2", backend="CUTLASS_MLA",
                                                                      num_kv_splits=4)]
    s = world.session()
    pm, _ = world.paired(s, cases)
    assert pm.arms[0].status is Status.UNSUPPORTED and "10.x" in pm.arms[0].message
    assert pm.arms[1].message.startswith("vLLM's default config failed, nothing to compare with: CUTLASS_MLA needs")
    assert world.engines_built == [] and world.inputs_made == [] and "engine_builds" not in s.counters


# -- 4: a poisoned context or OOM is not data ---------------------------------------------------------
@pytest.mark.parametrize("exc", [RuntimeError(POISON), OutOfMemoryError("Tried to allocate 20.00 GiB"),
                                 RuntimeError("CUDA out of memory.")], ids=["poisoned", "oom-class", "oom-text"])
@pytest.mark.parametrize("phase, label, step", [
    ("forward", "default", "reference (default config)"),  # the first forward of the default: its reference
    ("metadata", "splits16", "build metadata"),
    ("forward", "splits16", "numerics"),
    ("warmup", "splits16", "warm-up (arm 1)"),
    ("capture", "splits16", "CUDA graph capture (arm 1)"),
])
def test_a_poisoned_context_or_out_of_memory_propagates_from_every_step(world, exc, phase, label, step):
    cases = three_arms(world)
    world.fail(phase, label, exc, times=1)
    s = world.session()
    with pytest.raises(type(exc)) as err:
        world.paired(s, cases)
    assert err.value is exc
    assert s.step == step  # the worker names the step in the message every arm gets
    assert world.timers == []


def test_a_failed_graph_capture_is_treated_as_a_poisoned_context(world):
    cases = three_arms(world)
    exc = world.tm.GraphCaptureFailed("CUDA graph capture failed: RuntimeError: operation failed")
    world.fail("capture", "splits16", exc)
    with pytest.raises(world.tm.GraphCaptureFailed):
        world.paired(world.session(), cases)


# -- 5: one recording, one KV block size ---------------------------------------------------------------
def test_an_arm_whose_engine_uses_other_kv_blocks_is_refused_and_the_rest_are_recorded(world):
    cases = [world.case("default"), world.case("eager", cuda_graphs=False, latency=1.2),
             world.case("splits16", max_num_splits=16, latency=0.9)]
    world.block_sizes[make_plan(cases[1]).engine] = 128
    s = world.session()
    pm, _ = world.paired(s, cases)
    assert pm.arms[1].status is Status.UNSUPPORTED
    assert pm.arms[1].message == ("FLASH_ATTN_MLA uses KV blocks of 128 tokens, vLLM's default 64: the two cannot "
                                  "share one paired recording")
    assert pm.arms[0].ok and pm.arms[2].ok and pm.pairs[2].speedup == pytest.approx(1 / 0.9)
    # refused before its inputs could replace the default's: one set of inputs, of 64-token blocks
    assert [i["block_size"] for i in world.inputs_made] == [64] and s.counters["input_builds"] == 1


# -- 6: caches ---------------------------------------------------------------------------------------------
def test_a_second_recording_of_the_same_arms_builds_nothing_again(world):
    cases = three_arms(world)
    s = world.session()
    world.paired(s, cases)
    built = dict(s.counters)
    assert built == {"engine_builds": 3, "input_builds": 1, "metadata_builds": 3, "reference_builds": 1}
    pm, _ = world.paired(s, cases)
    assert pm.ok and dict(s.counters) == built
    assert len(world.engines_built) == 3 and len(world.model_dirs) == 1 and len(world.kv_b_projs) == 1
    assert len(world.captures) == 4  # graphs are not cached: each recording captures its own
    stats = s.stats()
    assert (stats["engines_cached"], stats["batches_cached"], stats["references_cached"]) == (3, 3, 1)


def test_engines_are_evicted_least_recently_used_first_and_take_their_metadata_with_them(world, monkeypatch):
    monkeypatch.setattr(world.vs, "MAX_ENGINES", 2)
    default = world.case("default")
    key_default = make_plan(default).engine
    key_flashmla = make_plan(world.case("flashmla", backend="FLASHMLA")).engine
    key_triton = make_plan(world.case("triton", backend="TRITON_MLA")).engine
    s = world.session()
    s.measure(default, make_plan(default))
    assert s.stats()["batches_cached"] == 1
    s.engine(key_flashmla)
    s.engine(key_default)  # used again: now the most recent
    s.engine(key_triton)  # evicts FLASHMLA's, not the default's
    assert s.stats()["batches_cached"] == 1 and s.stats()["engines_cached"] == 2
    builds = s.counters["engine_builds"]
    s.engine(key_flashmla)  # FLASHMLA's was evicted: built again; the default's is now the least recent and goes
    assert s.counters["engine_builds"] == builds + 1
    assert s.stats()["batches_cached"] == 0 and s.stats()["engines_cached"] == 2
    metadata = s.counters["metadata_builds"]
    m, _ = s.measure(default, make_plan(default))
    assert m.ok and s.counters["engine_builds"] == builds + 2 and s.counters["metadata_builds"] == metadata + 1


def test_inputs_are_rebuilt_only_when_shape_dims_kv_dtype_or_block_size_change(world):
    triton = world.case("triton", backend="TRITON_MLA")
    world.block_sizes[make_plan(triton).engine] = 128
    steps = [  # (case, input builds after it)
        (world.case("default"), 1),
        (world.case("splits16", max_num_splits=16), 1),  # another config of the shape
        (world.case("flashmla", backend="FLASHMLA"), 1),  # another backend of the same block size reuses them
        (triton, 2),  # 128-token blocks
        (world.case("default", spec="8q1s8k"), 3),  # another shape
        (world.case("default fp8", spec="8q1s8k", kv="fp8"), 4),  # fp8 caches
        (world.case("default", spec="8q1s8k"), 5),  # only one set of inputs is kept
    ]
    s = world.session()
    for case, builds in steps:
        m, _ = s.measure(case, make_plan(case))
        assert m.ok, m.message
        assert s.counters["input_builds"] == builds, case
    assert [i["block_size"] for i in world.inputs_made] == [64, 128, 64, 64, 64]
    assert [i["dtype"] for i in world.inputs_made] == [BF16, BF16, BF16, FP8, BF16]
    assert {i["layers"] for i in world.inputs_made} == {LAYERS}
    assert world.torch.cuda.calls.count(("empty_cache",)) == 5  # old caches freed before each allocation


def test_the_default_configs_reference_is_computed_once_per_shape_and_reused(world, monkeypatch):
    s = world.session()
    default, candidate = world.case("default"), world.case("splits16", max_num_splits=16, rel_err=0.01)
    other_shape = world.case("splits16", spec="8q1s8k", max_num_splits=16, rel_err=0.01)
    world.case("default", spec="8q1s8k")
    for case in (candidate, default, candidate):  # a candidate first: its reference is still the default's
        m, _ = s.measure(case, make_plan(case))
        assert m.ok
    assert s.counters["reference_builds"] == 1
    assert [(o.label, r) for o, r in world.compared] == [("splits16", Output("default", True)),
                                                         ("default", Output("default", True)),
                                                         ("splits16", Output("default", True))]
    assert s.measure(candidate, make_plan(candidate))[0].rel_err == 0.01
    monkeypatch.setattr(world.vs, "MAX_REFERENCES", 1)
    s.measure(other_shape, make_plan(other_shape))
    assert s.counters["reference_builds"] == 2 and s.stats()["references_cached"] == 1
    s.measure(candidate, make_plan(candidate))  # the first shape's reference was dropped: computed again
    assert s.counters["reference_builds"] == 3


def test_rebuild_every_trial_rebuilds_engine_and_metadata_but_not_inputs(world):
    s = world.session(rebuild_every_trial=True)
    case = world.case("default")
    for _ in range(2):
        assert s.measure(case, make_plan(case))[0].ok
    assert s.counters["engine_builds"] == 2 and s.counters["metadata_builds"] == 2
    assert s.counters["input_builds"] == 1


def test_recovering_from_oom_drops_the_inputs(world):
    s = world.session()
    case = world.case("default")
    s.measure(case, make_plan(case))
    s.recover_from_oom()
    assert s.stats()["inputs_layers"] == 0 and world.torch.cuda.calls[-2:] == [
        ("synchronize", FakeDevice("cuda", 1)), ("empty_cache",)]
    s.measure(case, make_plan(case))
    assert s.counters["input_builds"] == 2


# -- 7: the single-config path -------------------------------------------------------------------------
def test_measure_refuses_a_backend_the_gpu_cannot_run_before_building_anything(world):
    case = world.case("cutlass", backend="CUTLASS_MLA")
    s = world.session()
    m, phases = s.measure(case, make_plan(case))
    assert m.status is Status.UNSUPPORTED and "needs compute capability 10.x" in m.message
    assert phases == {} and world.engines_built == [] and world.inputs_made == [] and not s.counters


@pytest.mark.parametrize("kv, rel_err, message", [
    ("auto", 0.5, "numerics: rel err 0.5 vs the default config exceeds tol 0.02"),
    ("auto", math.nan, "numerics: output has NaN/Inf vs the default config exceeds tol 0.02"),
    ("fp8", 0.2, "numerics: rel err 0.2 vs the default config exceeds tol 0.1"),
])
def test_measure_reports_a_numerics_failure_as_an_error_without_timing_it(world, kv, rel_err, message):
    world.case("default", kv=kv)
    case = world.case("splits16", kv=kv, max_num_splits=16, rel_err=rel_err)
    m, phases = world.session().measure(case, make_plan(case))
    assert m.status is Status.ERROR and m.message == message and m.samples_ms == ()
    assert m.rel_err == rel_err or (math.isnan(rel_err) and math.isnan(m.rel_err))
    assert world.sampled == [] and "numerics_s" in phases and "total_s" not in phases


def test_measure_passes_fp8_within_its_own_tolerance(world):
    world.case("default", kv="fp8")
    case = world.case("splits16", kv="fp8", max_num_splits=16, rel_err=0.05)  # above bf16's 0.02, within 0.1
    m, _ = world.session().measure(case, make_plan(case))
    assert m.ok and m.rel_err == 0.05 and dict(m.details)["kv_cache_dtype"] == "fp8"


def test_measure_returns_the_recorded_samples_with_their_timing_details(world):
    world.case("default")
    case = world.case("splits16", max_num_splits=16, rel_err=0.004)
    s = world.session()
    m, phases = s.measure(case, make_plan(case))
    assert m.ok and m.samples_ms == tuple(world.samples) and m.rel_err == 0.004
    assert world.sampled == [(LAYERS, True, s.options.sampling)]  # a graph replay of LAYERS calls per sample
    d = dict(m.details)
    assert (d["timing"], d["warmup_calls"], d["retakes"], d["samples"]) == ("graph", "2", "1", "3")
    assert d["fa_num_splits"] == "16" and d["block_size"] == "64" and d["decode_tokens"] == "8"
    assert d["sm_clock_mhz"] == "1755-1980" and d["clock_events"] == "sw_power_cap"
    assert {"setup_s", "numerics_s", "warmup_s", "timed_s", "total_s"} <= set(phases)


# -- 8: clocks ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("capped", [True, False])
def test_the_clock_readings_of_a_paired_recording_reach_its_details(world, capped):
    world.nvml.capped = capped
    s = world.session()
    pm, _ = world.paired(s, three_arms(world))
    n = world.nvml.reads  # every reading of this session was taken around or during the one recording
    assert n >= 2
    d = dict(pm.details)
    assert d["sm_clock_mhz"] == "1755-1980" and d["gpu_temp_c"] == "60-71" and d["mem_clock_mhz"] == "2619"
    if capped:
        assert d["clock_events"] == "sw_power_cap"
        assert d["clock_event_share"] == f"{(n - 1) / n:.2f}"  # all but the first reading under the power cap
    else:  # a share of none is still a share: the recording says it saw no clock event
        assert (d["clock_events"], d["clock_event_share"]) == ("none", "0.00")
    assert world.nvml.bus_ids == ["00000000:1A:00.0"]  # the NVML device is the CUDA device, by PCI bus id


def test_without_nvml_the_recording_says_so_and_has_no_clock_event_share(world):
    world.nvml.broken = True
    pm, _ = world.paired(world.session(), three_arms(world))
    d = dict(pm.details)
    assert d["nvml"] == "nvml unavailable: RuntimeError: NVML Shared Library Not Found"
    assert "clock_event_share" not in d and "sm_clock_mhz" not in d
    assert pm.ok


def test_the_environment_comes_from_the_device_properties_and_versions(world):
    env = world.session().environment()
    assert (env.runner, env.gpu_name, env.compute_capability, env.sm_count) == (
        "vllm", "NVIDIA H100 80GB HBM3", "9.0", 132)
    assert (env.driver, env.cuda, env.torch, env.vllm) == ("580.65.06", "13.0", "2.11.0+fake", "0.20.0")
    extra = dict(env.extra)
    assert extra["l2_mib"] == "50" and extra["memory_gib"] == "80"
