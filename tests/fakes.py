"""Test doubles: a runner with a known landscape and a planted optimum. Fakes live here, never in src/."""

from __future__ import annotations

import hashlib
import random

from mla_tune.runners import Runner
from mla_tune.space import BACKENDS, PREFILL_BACKENDS
from mla_tune.types import BackendStatus, Case, Environment, Measurement, Status

FAKE_ENV = Environment(runner="fake", gpu_name="NVIDIA Fake100 80GB", compute_capability="9.0", sm_count=132,
                       driver="580.0", cuda="13.0", torch="2.11.0", vllm="0.20.0", mla_tune="0.1.0")


class FakeRunner(Runner):
    """Latency = base(shape) x a per-config factor in [1.05, 1.6), except ``optimum`` which is 0.8.

    Samples get +-``noise`` relative jitter from a seeded generator. Configs matching ``fail`` return ERROR,
    ``unsupported_prefill`` prefill backends are unavailable, ``interrupt_after`` raises KeyboardInterrupt on
    that measurement (counted from 1) to simulate Ctrl-C mid-study.
    """

    name = "fake"

    def __init__(self, optimum: dict | None = None, noise: float = 0.01, seed: int = 0,
                 fail: dict | None = None, interrupt_after: int | None = None,
                 unsupported_prefill: tuple[str, ...] = ("fa4", "flashinfer", "cudnn", "trtllm"),
                 unavailable: tuple[str, ...] = ("CUTLASS_MLA", "FLASHINFER_MLA")) -> None:
        self.optimum, self.noise, self.fail = optimum or {}, noise, fail
        self.rng = random.Random(seed)
        self.calls: list[Case] = []
        self.interrupt_after = interrupt_after
        self.unsupported_prefill, self.unavailable = unsupported_prefill, unavailable
        self.closed = False

    def environment(self) -> Environment:
        return FAKE_ENV

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

    @staticmethod
    def default_of(case: Case) -> dict:
        from mla_tune.space import load_space

        return load_space(case.backend).default_config(case.shape)

    def measure(self, case: Case) -> Measurement:
        self.calls.append(case)
        if self.interrupt_after is not None and len(self.calls) >= self.interrupt_after:
            raise KeyboardInterrupt
        if case.backend in self.unavailable:
            return Measurement.failed(Status.UNSUPPORTED, f"{case.backend} needs compute capability 10.x")
        if self.fail and all(case.param_dict.get(k) == v for k, v in self.fail.items()):
            return Measurement.failed(Status.ERROR, "planted failure")
        base = 0.01 * case.shape.num_tokens + 0.001 * sum(r.kv_len for r in case.shape.requests) / 64
        mean = base * self.factor(case)
        samples = tuple(mean * (1 + self.rng.uniform(-self.noise, self.noise)) for _ in range(20))
        return Measurement(Status.OK, samples, details=(("block_size", "64"),))

    def close(self) -> None:
        self.closed = True


class TwoBuildsRunner(FakeRunner):
    """Two separately built measurements of vLLM's default differ by ``bias`` (memory placement, clocks settling:
    what a study's noise floor is there to catch); every other config runs ``speedup`` times faster than build A.

    Back-to-back measurements of the default (the two of a confirmation round) are paired, and the pairs take the
    builds A B, then B A, ... as the rounds alternate their order: a round's first default is always build A and
    its second always build B, which runs ``bias`` faster. A lone default (the baseline trial) is build A. (This
    holds for an even number of rounds per candidate, as the rounds of the next candidate start over.)
    """

    def __init__(self, speedup: float, bias: float = 0.012, **kw) -> None:
        super().__init__(**kw)
        self.speedup, self.bias = speedup, bias
        self._pairs = 0  # completed pairs of back-to-back default measurements
        self._open = False  # the last measurement was the default, opening a pair

    def factor(self, case: Case) -> float:
        if case.param_dict != self.default_of(case):
            self._open = False
            return 1 / self.speedup
        second, self._open = self._open, not self._open
        build_b = (self._pairs % 2 == 0) == second
        self._pairs += second
        return 1 / (1 + self.bias) if build_b else 1.0
