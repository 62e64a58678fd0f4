"""Pure statistics for latencies: medians, spread, paired speedups with a confidence interval."""

from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# Two-sided 95% quantiles of Student's t for 1..30 degrees of freedom; 1.96 beyond.
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042)


def t95(dof: int) -> float:
    if dof < 1:
        raise ValueError("need at least one degree of freedom")
    return _T95[dof - 1] if dof <= len(_T95) else 1.96


def _t_cdf(x: float, dof: int) -> float:
    """Student's t CDF by Simpson integration of the density from 0 (smooth, so 2000 steps are plenty)."""
    c = math.exp(math.lgamma((dof + 1) / 2) - math.lgamma(dof / 2)) / math.sqrt(dof * math.pi)
    n, h = 2000, x / 2000

    def pdf(t: float) -> float:
        return c * (1 + t * t / dof) ** (-(dof + 1) / 2)

    s = pdf(0) + pdf(x) + sum((4 if i % 2 else 2) * pdf(i * h) for i in range(1, n))
    return 0.5 + s * h / 3


@functools.lru_cache(maxsize=1024)
def t_quantile(p: float, dof: int) -> float:
    """The ``p`` quantile (p > 0.5) of Student's t with ``dof`` degrees of freedom, by bisection.

    Cached: a few (level, dof) pairs recur in every confirmation, and each bisection integrates the density in
    pure Python (``show`` of 100 studies spent 12 of its 13 s here)."""
    if not 0.5 < p < 1:
        raise ValueError("p must lie in (0.5, 1)")
    if abs(p - 0.975) < 1e-12:
        return t95(dof)
    lo, hi = 0.0, 1.0
    while _t_cdf(hi, dof) < p:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_cdf(mid, dof) < p else (lo, mid)
    return (lo + hi) / 2


def familywise_level(k: int, level: float = 0.95) -> float:
    """Bonferroni: the per-interval level that keeps ``k`` intervals jointly at ``level``."""
    return 1 - (1 - level) / max(1, k)


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


@dataclass(frozen=True)
class PairedSpeedup:
    """How much faster B is than A from paired rounds: ratio = A/B per round, geometric mean and 95% CI."""

    speedup: float
    ci_low: float
    ci_high: float
    rounds: int

    @property
    def significant(self) -> bool:
        """True when the whole interval says B is faster: a gain distinguishable from noise."""
        return self.ci_low > 1.0


def paired_speedup(baseline_ms: Sequence[float], candidate_ms: Sequence[float],
                   level: float = 0.95) -> PairedSpeedup:
    """Speedup of candidate over baseline from per-round latencies measured back to back (A B A B ...).

    Pairing cancels drift between rounds (clocks, temperature, neighbours): each round's ratio sees the same
    conditions. The interval is Student's t on the log ratios, two-sided at ``level``.
    """
    if len(baseline_ms) != len(candidate_ms) or not baseline_ms:
        raise ValueError("need the same, non-zero number of baseline and candidate rounds")
    logs = [math.log(a / b) for a, b in zip(baseline_ms, candidate_ms)]
    mean = statistics.fmean(logs)
    if len(logs) < 2:
        return PairedSpeedup(math.exp(mean), 0.0, math.inf, 1)
    half = t_quantile(1 - (1 - level) / 2, len(logs) - 1) * statistics.stdev(logs) / math.sqrt(len(logs))
    return PairedSpeedup(math.exp(mean), math.exp(mean - half), math.exp(mean + half), len(logs))


def round_sig(x: float, digits: int = 6) -> float:
    """Stable floats for files people diff: ``digits`` significant digits."""
    if x == 0 or not math.isfinite(x):
        return x
    return round(x, digits - 1 - int(math.floor(math.log10(abs(x)))))


def blocks_of(order: Sequence[int], samples: Sequence[Sequence[float]]) -> list[dict[int, list[float]]]:
    """An interleaved recording cut into its blocks: per block, each arm's samples in it.

    ``order`` is the arm of each sample in time order and ``samples[a]`` arm ``a``'s samples in time order. A block
    runs every arm twice (a permutation, then the same mirrored), so it is ``2 x arms`` samples long; a last,
    incomplete block is dropped.
    """
    n_arms = len(samples)
    size = 2 * n_arms
    taken = [0] * n_arms
    out: list[dict[int, list[float]]] = []
    for start in range(0, len(order) - size + 1, size):
        block: dict[int, list[float]] = {}
        for arm in order[start:start + size]:
            block.setdefault(arm, []).append(samples[arm][taken[arm]])
            taken[arm] += 1
        out.append(block)
    return out


def block_speedup(blocks: Sequence[Mapping[int, Sequence[float]]], ref: int, arm: int,
                  level: float = 0.95) -> tuple[float, tuple[float, float] | None]:
    """Geometric mean over ``blocks`` of (ref's mean time / arm's mean time), and its Student-t interval at
    ``level`` over the blocks (None for fewer than two)."""
    logs = [math.log(statistics.fmean(b[ref]) / statistics.fmean(b[arm])) for b in blocks if b.get(ref) and b.get(arm)]
    if not logs:
        raise ValueError("no block holds both arms")
    mean = statistics.fmean(logs)
    if len(logs) < 2:
        return math.exp(mean), None
    half = t_quantile(1 - (1 - level) / 2, len(logs) - 1) * statistics.stdev(logs) / math.sqrt(len(logs))
    return math.exp(mean), (math.exp(mean - half), math.exp(mean + half))
