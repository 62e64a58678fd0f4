"""The runner's warm-up, sampling and stationarity rules, and its NVML clock readings (CPU, fake NVML)."""

from __future__ import annotations

import pytest

from mla_tune.runners._nvml import ClockReading, Clocks, clock_details, nvml_index, reasons_text
from mla_tune.runners._timing_policy import (SamplingPolicy, WarmupPolicy, drift, enough_samples, stationary,
                                            timing_details, warmup_done)
from mla_tune.runners._vllm_plan import RunnerOptions, parse_runner_arg


def test_warmup_needs_count_time_and_a_settled_last_call() -> None:
    p = WarmupPolicy(min_calls=5, min_time_ms=25.0)
    assert not warmup_done([5.0, 0.01, 0.01], p)  # too few calls
    assert warmup_done([5.0, 0.01, 0.01, 0.011, 0.01], p)
    assert not warmup_done([0.01, 0.01, 0.01, 0.01, 3.0], p)  # a JIT compile just happened
    fast = [0.001] * 5  # 5 ms of calls: the count is reached, the time is not
    assert not warmup_done(fast, p)
    assert warmup_done([0.001] * 25, p)


def test_sampling_stops_at_count_and_gpu_time_or_the_cap() -> None:
    p = SamplingPolicy(min_samples=30, min_time_ms=50.0, max_samples=400)
    assert not enough_samples([1.0] * 29, 8, p)
    assert enough_samples([1.0] * 30, 8, p)  # 240 ms of GPU time
    assert not enough_samples([0.01] * 30, 8, p)  # 2.4 ms: a tiny shape samples on
    assert enough_samples([0.01] * 625, 8, p)  # ... up to the cap
    assert enough_samples([0.02] * 313, 8, p) and not enough_samples([0.02] * 312, 8, p)


def test_drift_compares_the_first_and_last_thirds() -> None:
    flat = [1.0] * 30
    assert drift(flat) == 0.0 and stationary(flat, SamplingPolicy())
    falling = [0.60] * 10 + [0.58] * 10 + [0.555] * 10  # the H100's FA 256q1s4k recording, in shape
    assert drift(falling) == pytest.approx(0.555 / 0.60 - 1)
    assert not stationary(falling, SamplingPolicy(drift_tol=0.03))
    assert drift([1.0, 2.0, 3.0]) == 0.0  # too short to judge
    d = timing_details(falling, 2, SamplingPolicy())
    assert d == {"drift": "-7.5%", "stationary": "no", "retakes": "2", "samples": "30"}


def test_runner_options_carry_the_policies_and_parse_from_the_cli() -> None:
    o = RunnerOptions(**parse_runner_arg("samples=10,min_time_ms=5,warmup_ms=1.5,max_retakes=0"))
    assert o.sampling == SamplingPolicy(10, 5.0, 400, 0.03, 0)
    assert o.warmup_policy == WarmupPolicy(5, 1.5, 90.0)
    assert RunnerOptions(samples=500).sampling.max_samples == 500  # the minimum wins over the cap


class FakeNvml:
    NVML_CLOCK_SM, NVML_CLOCK_MEM, NVML_TEMPERATURE_GPU = 1, 2, 0

    def __init__(self, fail_init: bool = False) -> None:
        self.fail_init = fail_init
        self.sm = [1980, 1755]
        self.asked: list[object] = []

    def nvmlInit(self) -> None:
        if self.fail_init:
            raise RuntimeError("NVML Shared Library Not Found")

    def nvmlDeviceGetHandleByPciBusId(self, bus: str) -> str:
        self.asked.append(bus)
        return "h"

    def nvmlDeviceGetHandleByIndex(self, i: int) -> str:
        self.asked.append(i)
        return "h"

    def nvmlDeviceGetClockInfo(self, h: str, kind: int) -> int:
        return self.sm.pop(0) if kind == 1 else 4800

    def nvmlDeviceGetTemperature(self, h: str, kind: int) -> int:
        return 44

    def nvmlDeviceGetCurrentClocksEventReasons(self, h: str) -> int:
        return 0x1 | 0x4  # idle (ignored) + software power cap


def test_clock_readings_become_details() -> None:
    nv = FakeNvml()
    clocks = Clocks("00000000:1B:00.0", 0, nvml=nv)
    readings = [clocks.read(), clocks.read()]
    assert nv.asked == ["00000000:1B:00.0"]
    assert clocks.details(readings) == {"sm_clock_mhz": "1755-1980", "mem_clock_mhz": "4800",
                                        "gpu_temp_c": "44", "clock_events": "sw_power_cap"}
    # the SM clock list ran out: the read fails, and every later read says why instead of raising
    assert clocks.read() is None and clocks.details([None]) == {"nvml": clocks.problem}
    assert "IndexError" in clocks.problem


def test_without_nvml_a_measurement_says_so() -> None:
    clocks = Clocks(None, 1, nvml=FakeNvml(fail_init=True))
    assert clocks.read() is None
    assert clocks.details([None])["nvml"].startswith("nvml unavailable: RuntimeError")


def test_nvml_index_follows_cuda_visible_devices() -> None:
    assert nvml_index(0, "") == 0
    assert nvml_index(1, "3,5") == 5
    assert nvml_index(0, "GPU-8d3f") == 0  # a UUID: fall back to the CUDA index
    assert reasons_text(0) == "none" and reasons_text(0x40 | 0x8) == "hw_slowdown,hw_thermal"
    assert clock_details([]) == {} and clock_details([ClockReading(1, 2, 3, 0)])["clock_events"] == "none"
