"""When to stop warming up and sampling, and whether a recording is stationary: pure, without torch.

The harnesses this follows (NVIDIA nvbench, Triton's ``do_bench``, FlashInfer's ``bench_gpu_time``) bound
warm-up and sampling by time as well as by count: a count alone warms a 2.75 ms shape for 14 ms and a 0.05 ms
one for 0.3 ms, and 30 samples of a tiny shape take less GPU time than one clock-governor step. nvbench also
keeps sampling until its estimate settles; here a recording is checked for drift (its first and last thirds
against each other) and re-taken, up to a limit, while they disagree, then marked so that readers know.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class SamplingPolicy:
    """How long one recording samples. Each sample is one replay of ``calls`` layer calls."""

    min_samples: int = 30
    min_time_ms: float = 50.0  # GPU time summed over the samples (per-call ms x calls)
    max_samples: int = 400
    drift_tol: float = 0.03  # first vs last third medians, relative
    max_retakes: int = 2  # recordings re-taken while they drift; the last one is kept and marked


@dataclass(frozen=True)
class PairedPolicy:
    """How long one interleaved recording (``_interleave.record``) runs: blocks, each running every arm twice."""

    min_blocks: int = 10
    min_time_ms: float = 50.0  # device time per arm, summed over its samples
    max_blocks: int = 300
    inflight: int = 2  # blocks queued ahead of the one the host waits for: no idle device between samples
    clock_every_s: float = 0.02  # host seconds between clock readings during the recording

    def __post_init__(self) -> None:
        if self.min_blocks < 1 or self.max_blocks < 1 or self.inflight < 1:
            raise ValueError("a paired recording needs at least one block, and one in flight")


@dataclass(frozen=True)
class WarmupPolicy:
    min_calls: int = 5
    min_time_ms: float = 25.0  # as do_bench's default warm-up
    budget_s: float = 90.0  # JIT compiles (Triton, FlashInfer) can take a minute on the first call


def warmup_done(times_s: Sequence[float], policy: WarmupPolicy) -> bool:
    """Warm-up is over after ``min_calls`` calls and ``min_time_ms``, once the last call is no slower than 2x
    the median of the last ``min_calls``: a JIT compile or a background build makes a call seconds slower."""
    minimum = max(1, policy.min_calls)
    if len(times_s) < minimum or sum(times_s) * 1e3 < policy.min_time_ms:
        return False
    recent = sorted(times_s[-minimum:])
    return times_s[-1] <= 2.0 * recent[len(recent) // 2]


def enough_samples(per_call_ms: Sequence[float], calls: int, policy: SamplingPolicy) -> bool:
    """At least ``min_samples`` and ``min_time_ms`` of GPU time, or ``max_samples`` whatever the time."""
    n = len(per_call_ms)
    if n >= policy.max_samples:
        return True
    return n >= policy.min_samples and sum(per_call_ms) * calls >= policy.min_time_ms


def drift(samples: Sequence[float]) -> float:
    """Median of the last third over the median of the first third, minus 1 (0.0 for fewer than 6 samples)."""
    third = len(samples) // 3
    if third < 2:
        return 0.0
    first = statistics.median(samples[:third])
    last = statistics.median(samples[-third:])
    return last / first - 1.0 if first > 0 else 0.0


def stationary(samples: Sequence[float], policy: SamplingPolicy) -> bool:
    return abs(drift(samples)) <= policy.drift_tol


def timing_details(samples: Sequence[float], retakes: int, policy: SamplingPolicy | None = None) -> dict[str, str]:
    """What a measurement says about its own stability (stored with it, shown by sweep summaries)."""
    d = drift(samples)
    tol = (policy or SamplingPolicy()).drift_tol
    return {"drift": f"{d * 100:+.1f}%", "stationary": "yes" if abs(d) <= tol else "no",
            "retakes": str(retakes), "samples": str(len(samples))}
