"""Paired recordings on a virtual clock: the block order, the recording loop, the pair statistics, composition."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from mla_tune.runners._interleave import (balanced_blocks, composed, enough, event_share, merge_arms, pair_stats,
                                          paired_measurement, record, resampled)
from mla_tune.runners._timing_policy import PairedPolicy
from mla_tune.types import Measurement, PairedMeasurement, PairStat, Status

from .fakes import FakeTimer


def test_blocks_mirror_a_rotating_permutation_so_every_arm_leads_in_turn():
    gen = balanced_blocks(3, seed=1)
    blocks = [next(gen) for _ in range(6)]
    for b in blocks:
        assert len(b) == 6 and b[:3] == b[3:][::-1] and sorted(b[:3]) == [0, 1, 2]
    assert sorted(b[0] for b in blocks[:3]) == [0, 1, 2]  # over n blocks each arm leads once
    gen2 = balanced_blocks(2)
    assert [next(gen2) for _ in range(2)] in ([(0, 1, 1, 0), (1, 0, 0, 1)], [(1, 0, 0, 1), (0, 1, 1, 0)])


class Gpu:
    """A virtual GPU: each arm's call takes its time x the clock, which moves as the test says (the power cap)."""

    def __init__(self, times, clock=lambda t: 1.0, noise=0.0, seed=0):
        self.timer, self.times, self.clock, self.noise = FakeTimer(), times, clock, noise
        self.rng = random.Random(seed)
        self.calls = []

    def replays(self):
        def run(arm):
            def go():
                self.calls.append(arm)
                self.timer.now += self.times[arm] * self.clock(self.timer.now) * (1 + self.rng.uniform(-self.noise,
                                                                                                          self.noise))
            return go
        return [run(a) for a in range(len(self.times))]


def test_a_clock_that_swings_by_ten_percent_leaves_the_ratio_exact():
    """The H100 under its power cap: the clock swings by +-10% every ~60 ms; A/B stays 1.05 within 0.2%."""
    gpu = Gpu([1.05, 1.0], clock=lambda t: 1 + 0.1 * math.sin(t / 10))
    rec = record(gpu.replays(), 1, gpu.timer, PairedPolicy(min_blocks=40, min_time_ms=0, max_blocks=40))
    ref, arm = pair_stats(rec.samples_ms, rec.order)
    assert ref.speedup == 1.0 and arm.blocks == 40
    assert arm.speedup == pytest.approx(1.05, rel=2e-3) and arm.ci[1] - arm.ci[0] < 0.01
    assert rec.order[:4] in ((0, 1, 1, 0), (1, 0, 0, 1))
    # the same device timed one config after the other is off by the clock
    apart = Gpu([1.05, 1.0], clock=lambda t: 1 + 0.1 * math.sin(t / 10))
    one = record(apart.replays()[:1], 1, apart.timer, PairedPolicy(min_blocks=40, min_time_ms=0, max_blocks=40))
    two = record(apart.replays()[1:], 1, apart.timer, PairedPolicy(min_blocks=40, min_time_ms=0, max_blocks=40))
    assert abs(statistics.median(one.samples_ms[0]) / statistics.median(two.samples_ms[0]) - 1.05) > 0.01


def test_a_recording_stops_at_its_minimums_or_its_cap_and_times_per_layer_call():
    gpu = Gpu([2.0, 1.0])
    rec = record(gpu.replays(), 4, gpu.timer, PairedPolicy(min_blocks=5, min_time_ms=30.0, max_blocks=100))
    # 30 ms of device time per arm: a block is 2 x (2 + 1) ms = 6 ms, so 10 blocks
    assert rec.blocks == 10 + 1  # one more block was queued when the tenth completed (inflight 2): kept
    assert rec.samples_ms[0][0] == pytest.approx(0.5) and rec.samples_ms[1][0] == pytest.approx(0.25)
    capped = record(gpu.replays(), 1, gpu.timer, PairedPolicy(min_blocks=5, min_time_ms=1e9, max_blocks=7))
    assert capped.blocks == 7  # never more than max_blocks
    assert enough(10, 0.0, 2, PairedPolicy(min_blocks=10, min_time_ms=0.0))
    assert not enough(9, 1e9, 2, PairedPolicy(min_blocks=10))


def test_blocks_stay_queued_ahead_so_the_device_never_waits_for_the_host():
    """Every block is queued before the host waits for the one two blocks back (the timer's marks say when)."""
    gpu = Gpu([1.0, 1.0])
    waited = []
    elapsed = gpu.timer.elapsed_ms

    def watch(a, b):
        waited.append(len(gpu.calls))
        return elapsed(a, b)

    gpu.timer.elapsed_ms = watch
    record(gpu.replays(), 1, gpu.timer, PairedPolicy(min_blocks=6, min_time_ms=0, max_blocks=6, inflight=2))
    assert waited[0] == 8  # two blocks (4 samples each) queued before the first wait


def test_clocks_are_read_during_the_recording_and_their_events_counted():
    gpu = Gpu([1.0, 1.0])
    now = iter(range(1000))
    reads = []
    rec = record(gpu.replays(), 1, gpu.timer, PairedPolicy(min_blocks=5, min_time_ms=0, max_blocks=5,
                                                           clock_every_s=2), read_clocks=lambda: reads.append(1) or
                 len(reads), now=lambda: next(now))
    assert len(rec.readings) >= 4 and rec.readings[0] == 1
    assert event_share([1, 2, 3, None], lambda r: r, 0x1) == pytest.approx(2 / 3)
    assert event_share([None], lambda r: r, 0x1) is None


def test_a_paired_measurement_keeps_arms_that_failed_before_the_recording():
    gpu = Gpu([1.0, 0.9])
    rec = record(gpu.replays(), 1, gpu.timer, PairedPolicy(min_blocks=4, min_time_ms=0, max_blocks=4))
    failed = Measurement.failed(Status.UNSUPPORTED, "needs SM100")
    pm = paired_measurement([None, failed, None], rec, [{"prefill": "fa3"}, {}, {"prefill": "fa2"}],
                            [0.001, None, 0.002], {"sm_clock_mhz": "1980"})
    assert [m.status for m in pm.arms] == [Status.OK, Status.UNSUPPORTED, Status.OK]
    assert pm.pairs[1] is None and pm.pairs[2].speedup == pytest.approx(1 / 0.9)
    assert dict(pm.arms[2].details)["prefill"] == "fa2" and pm.arms[2].rel_err == 0.002
    assert set(pm.order) == {0, 2}  # the caller's numbering
    d = dict(pm.details)
    assert d["paired"] == "interleaved" and d["blocks"] == "4" and d["sm_clock_mhz"] == "1980" and pm.gpu_s > 0
    with pytest.raises(ValueError):
        paired_measurement([failed, None], rec)  # the reference must be recorded


def test_composed_and_merged_measurements_say_what_they_are():
    a = Measurement(Status.OK, (2.0, 2.0, 2.0))
    b = Measurement(Status.OK, (1.0, 1.0, 1.0))
    pm = composed([a, b])
    assert pm.pairs[1].speedup == 2.0 and not pm.pairs[1].interleaved and dict(pm.details)["paired"].startswith("no")
    bad = composed([Measurement.failed(Status.OOM, "out of memory"), b])
    assert not bad.ok and "nothing to compare with" in bad.arms[1].message
    sub = PairedMeasurement((a, b), (PairStat(2.0, 1.0), PairStat(2.0, 2.0, (1.9, 2.1), 3)), (0, 1, 1, 0))
    merged = merge_arms(3, {1: Measurement.failed(Status.UNSUPPORTED, "no")}, sub, [0, 2])
    assert merged.arms[1].status is Status.UNSUPPORTED and merged.pairs[2].speedup == 2.0
    assert merged.order == (0, 2, 2, 0)
    with pytest.raises(ValueError):
        PairedMeasurement((a,), (None,))  # an ok arm has a pair


def test_a_resampled_recording_keeps_its_blocks_whole():
    gpu = Gpu([1.1, 1.0], clock=lambda t: 1 + 0.1 * math.sin(t / 10), noise=0.001)
    rec = record(gpu.replays(), 1, gpu.timer, PairedPolicy(min_blocks=30, min_time_ms=0, max_blocks=30))
    samples, order = resampled(rec.samples_ms, rec.order, random.Random(3))
    assert len(order) == len(rec.order) and sorted(samples[0] + samples[1]) != []
    arm = pair_stats(samples, order)[1]
    assert arm.speedup == pytest.approx(1.1, rel=0.005)  # the clock's swings still cancel block by block


def test_an_eager_arm_starts_each_sample_on_a_drained_device():
    """Queued behind graph replays an eager arm's launches would hide; drained first, each of its samples includes
    them wherever it stands in the block."""
    gpu = Gpu([1.0, 1.0])
    record(gpu.replays(), 1, gpu.timer, PairedPolicy(min_blocks=3, min_time_ms=0, max_blocks=3), eager=[False, True])
    assert gpu.timer.drains == 3 * 2  # arm 1 runs twice per block
    with pytest.raises(ValueError):
        PairedPolicy(min_blocks=0)
