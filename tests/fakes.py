"""Test doubles: a runner with a known landscape and a planted optimum. Fakes live here, never in src/."""

from __future__ import annotations

import dataclasses
import hashlib
import random

from mla_tune.runners import Runner, check_same_shape
from mla_tune.runners._interleave import composed, paired_measurement, record
from mla_tune.runners._timing_policy import PairedPolicy
from mla_tune.space import BACKENDS, PREFILL_BACKENDS
from mla_tune.types import BackendStatus, Case, Environment, Measurement, PairedMeasurement, Status

FAKE_ENV = Environment(runner="fake", gpu_name="NVIDIA Fake100 80GB", compute_capability="9.0", sm_count=132,
                       driver="580.0", cuda="13.0", torch="2.11.0", vllm="0.20.0", mla_tune="0.1.0")


class FakeTimer:
    """``_interleave.Timer`` on a virtual clock that the fake replays advance (milliseconds)."""

    def __init__(self) -> None:
        self.now = 0.0

    def mark(self) -> float:
        return self.now

    def elapsed_ms(self, start: float, stop: float) -> float:
        return stop - start

    def drain(self) -> None:
        self.drains = getattr(self, "drains", 0) + 1


class FakeRunner(Runner):
    """Latency = base(shape) x a per-config factor in [1.05, 1.6), except ``optimum`` which is 0.8.

    Samples get +-``noise`` relative jitter from a seeded generator. Configs matching ``fail`` return ERROR,
    ``unsupported_prefill`` prefill backends are unavailable, ``interrupt_after`` raises KeyboardInterrupt on
    that measurement or recording (counted from 1) to simulate Ctrl-C mid-study.

    ``measure_paired`` records its arms interleaved through the real ``_interleave.record`` on a virtual clock; a
    GPU clock that moves between recordings (a power cap) is ``clock_noise``: every recording (and every ``measure``)
    runs at a clock factor drawn in 1 +- clock_noise, the same for all arms of one recording; ``arm_jitter`` puts each
    arm of each recording off by its own factor in 1 +- arm_jitter (what pairing cannot cancel: a graph captured
    again, memory placed elsewhere). ``recordings`` lists
    the cases of each paired recording; ``calls`` every case measured apart from the reference arms (what ``measure``
    got, and each paired recording's arms after the first).
    """

    name = "fake"

    def __init__(self, optimum: dict | None = None, noise: float = 0.01, seed: int = 0,
                 fail: dict | None = None, interrupt_after: int | None = None,
                 unsupported_prefill: tuple[str, ...] = ("fa4", "flashinfer", "cudnn", "trtllm"),
                 unavailable: tuple[str, ...] = ("CUTLASS_MLA", "FLASHINFER_MLA"), clock_noise: float = 0.0,
                 arm_jitter: float = 0.0, blocks: int = 8, vllm: str = FAKE_ENV.vllm) -> None:
        self.optimum, self.noise, self.fail = optimum or {}, noise, fail
        self.vllm = vllm  # the vLLM it claims to measure with: its family decides which backends run in graphs
        self.rng = random.Random(seed)
        self.calls: list[Case] = []
        self.recordings: list[tuple[Case, ...]] = []
        self.interrupt_after = interrupt_after
        self.unsupported_prefill, self.unavailable = unsupported_prefill, unavailable
        self.clock_noise, self.arm_jitter, self.blocks = clock_noise, arm_jitter, blocks
        self.events = 0  # measure calls and paired recordings, for interrupt_after
        self.closed = False

    def environment(self) -> Environment:
        return FAKE_ENV if self.vllm == FAKE_ENV.vllm else dataclasses.replace(FAKE_ENV, vllm=self.vllm)

    def backends(self) -> tuple[BackendStatus, ...]:
        decode = tuple(BackendStatus(b, "decode", b not in self.unavailable,
                                     "" if b not in self.unavailable else "needs compute capability 10.x")
                       for b in BACKENDS)
        prefill = tuple(BackendStatus(p, "prefill", p not in self.unsupported_prefill,
                                      "" if p not in self.unsupported_prefill else "needs SM100")
                        for p in PREFILL_BACKENDS if p != "auto")
        return decode + prefill

    def factor(self, case: Case) -> float:
        params = case.param_dict
        if self.optimum and all(params.get(k) == v for k, v in self.optimum.items()):
            return 0.8
        if params == self.default_of(case):
            return 1.0
        digest = hashlib.sha256(repr(sorted(params.items())).encode()).digest()
        return 1.05 + digest[0] / 255 * 0.55

    def default_of(self, case: Case) -> dict:
        from mla_tune.vllm_adapters import recorded_adapter

        return recorded_adapter(self.vllm).search_space(case.backend).default_config(case.shape)

    def on_measure(self) -> None:
        """Called as each measurement or paired recording starts (``events`` counts them from 1): test doubles
        override it to stop, kill or fail at a given one."""
        if self.interrupt_after is not None and self.events >= self.interrupt_after:
            raise KeyboardInterrupt

    def refusal(self, case: Case) -> Measurement | None:
        """The failure ``case`` gets instead of a measurement (None: it runs); test doubles override it."""
        if case.backend in self.unavailable:
            return Measurement.failed(Status.UNSUPPORTED, f"{case.backend} needs compute capability 10.x")
        if self.fail and all(case.param_dict.get(k) == v for k, v in self.fail.items()):
            return Measurement.failed(Status.ERROR, "planted failure")
        return None

    def _jitter(self) -> float:
        return 1 + self.rng.uniform(-self.arm_jitter, self.arm_jitter)

    def mean_ms(self, case: Case, arm: int = 0, cases: tuple[Case, ...] = ()) -> float:
        base = 0.01 * case.shape.num_tokens + 0.001 * sum(r.kv_len for r in case.shape.requests) / 64
        return base * self.factor(case)

    def measure(self, case: Case) -> Measurement:
        self.calls.append(case)
        self.events += 1
        self.on_measure()
        refused = self.refusal(case)
        if refused is not None:
            return refused
        mean = self.mean_ms(case) * (1 + self.rng.uniform(-self.clock_noise, self.clock_noise)) * self._jitter()
        samples = tuple(mean * (1 + self.rng.uniform(-self.noise, self.noise)) for _ in range(20))
        return Measurement(Status.OK, samples, details=(("block_size", "64"),))

    def measure_paired(self, cases) -> PairedMeasurement:
        check_same_shape(cases)
        cases = tuple(cases)
        self.recordings.append(cases)
        self.calls.extend(cases[1:])
        self.events += 1
        self.on_measure()
        pre = [self.refusal(c) for c in cases]
        if pre[0] is not None:
            return composed(pre[:1] + [p or pre[0] for p in pre[1:]])
        clock = 1 + self.rng.uniform(-self.clock_noise, self.clock_noise)  # one clock for the whole recording
        timer = FakeTimer()

        def replay(mean: float):
            def run() -> None:
                timer.now += mean * clock * (1 + self.rng.uniform(-self.noise, self.noise))
            return run

        live = [i for i, p in enumerate(pre) if p is None]
        rec = record([replay(self.mean_ms(cases[i], i, cases) * self._jitter()) for i in live], 1, timer,
                     PairedPolicy(min_blocks=self.blocks, min_time_ms=0.0, max_blocks=self.blocks))
        return paired_measurement(pre, rec, [{"block_size": "64"}] * len(cases))

    def close(self) -> None:
        self.closed = True


class TwoBuildsRunner(FakeRunner):
    """Two separately built instances of vLLM's default differ by ``bias`` (memory placement, clocks settling: what a
    study's noise floor is there to catch); every other config runs ``speedup`` times faster than build A.

    In a paired recording the first arm is build A and any later arm running the default is build B, ``bias`` faster.
    """

    def __init__(self, speedup: float, bias: float = 0.012, **kw) -> None:
        super().__init__(**kw)
        self.speedup, self.bias = speedup, bias

    def _jitter(self) -> float:
        return 1 + self.rng.uniform(-self.arm_jitter, self.arm_jitter)

    def mean_ms(self, case: Case, arm: int = 0, cases: tuple[Case, ...] = ()) -> float:
        base = super().mean_ms(case)
        if case.param_dict != self.default_of(case):
            return base / self.speedup
        return base / (1 + self.bias) if arm > 0 else base

    def factor(self, case: Case) -> float:
        return 1.0
