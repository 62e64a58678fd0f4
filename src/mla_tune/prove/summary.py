"""A bench-serve's runs as each metric's ratio to vLLM's default, per load, with an interval over the repeats.

Pure. A variant's run in repeat r is compared with the default's run in the same repeat (the two ran back to back
in the crossed-over order), and the ratios of the repeats give the geometric mean and Student's t interval on
their logs (``stats.paired_speedup``). Every ratio reads "above 1 is better": throughput variant/default,
latencies default/variant. A gain (or a loss) is claimed only where the interval excludes 1, and only for the
judged metrics (throughput, TPOT, ITL: what the profile changes), each at a family-wise 95% over its comparisons
(Bonferroni), so that a profile that changes nothing is rarely called better or worse. p99 ITL and TTFT are shown
with their intervals, not judged.

Where both ran, the profile is also compared with the flags variant directly, repeat by repeat (they run next to each
other in every repeat): what the plugin's per-batch choice gains over setting the same value once for every batch.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..stats import familywise_level, paired_speedup, round_sig, t_quantile
from .plan import BenchPlan, Load, Start

LEVEL = 0.95
MAX_REPEATS = 100  # what --repeats allows
NEGLIGIBLE = 0.01  # a ratio within 1% of 1 is not worth more repeats to decide
SUSPECT = 0.10  # a run this far off its variant's median at its load is listed: look at its logs


@dataclass(frozen=True)
class Metric:
    key: str  # the field of vLLM's result JSON
    label: str
    unit: str
    higher_is_better: bool
    judged: bool = True  # a gain or loss may be claimed on it


METRICS = (
    Metric("output_throughput", "output throughput", "tok/s", True),
    Metric("mean_tpot_ms", "mean TPOT", "ms", False),
    Metric("median_itl_ms", "median ITL", "ms", False),
    Metric("p99_itl_ms", "p99 ITL", "ms", False, judged=False),
    Metric("median_ttft_ms", "median TTFT", "ms", False, judged=False),
)
HEADLINE = ("output_throughput", "mean_tpot_ms", "median_itl_ms")  # what the plot and the short table show


@dataclass(frozen=True)
class RunResult:
    """One completed client run: vLLM's numbers for ``load`` on the server of ``start``."""

    start: Start
    load: Load
    values: Mapping[str, float]  # METRICS keys -> value, as vLLM's result JSON has them
    path: str  # the result JSON


@dataclass(frozen=True)
class Ratio:
    variant: str
    load: Load
    metric: Metric
    ratio: float  # above 1: the variant is better than the baseline
    low: float
    high: float
    repeats: int
    level: float = LEVEL  # of this interval (family-wise LEVEL over the metric's comparisons)
    baseline: str = "default"

    @property
    def label(self) -> str:
        return self.variant if self.baseline == "default" else f"{self.variant} vs {self.baseline}"

    @property
    def verdict(self) -> str:
        if self.repeats < 2:
            return "one repeat: no interval"
        if not self.metric.judged:
            return "shown, not judged"
        if self.low > 1:
            return "better"
        if self.high < 1:
            return "worse"
        return "same within noise"

    def repeats_to_decide(self) -> int | None:
        """For a judged ratio whose interval includes 1: about how many repeats would make the interval exclude
        1 if later repeats showed the mean and spread these did (an estimate, not a promise). None where nothing
        is undecided, where the ratio is within ``NEGLIGIBLE`` of 1, or where even ``MAX_REPEATS`` would not do."""
        if self.verdict != "same within noise" or not (0 < self.low < self.ratio < self.high < math.inf):
            return None
        mean = abs(math.log(self.ratio))
        if mean < math.log1p(NEGLIGIBLE):
            return None
        q = 1 - (1 - self.level) / 2
        sd = (math.log(self.high) - math.log(self.low)) / 2 * math.sqrt(self.repeats) / t_quantile(q, self.repeats - 1)

        def decides(n: int) -> bool:
            return t_quantile(q, n - 1) * sd / math.sqrt(n) < mean

        lo, hi = self.repeats, MAX_REPEATS  # decides() turns true once and stays: bisect for the first n
        if not decides(hi):
            return None
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if decides(mid) else (mid, hi)
        return hi


@dataclass(frozen=True)
class Suspect:
    """A run whose ``metric`` lies more than ``SUSPECT`` off the median of its variant's repeats at the same load
    (itself included: with 3 repeats or more one odd run cannot move the median): a cold server, a neighbour on the
    GPU, a client that stalled. Shown, never dropped."""

    run: RunResult
    metric: Metric
    value: float
    median: float  # of the variant's repeats at the load

    @property
    def off(self) -> float:
        return self.value / self.median - 1


@dataclass(frozen=True)
class Summary:
    plan: BenchPlan
    runs: tuple[RunResult, ...]
    ratios: tuple[Ratio, ...]
    environment: Mapping[str, str]  # gpu, vllm, mla_tune
    complete: bool  # every planned run finished

    def medians(self, variant: str, load: Load) -> dict[str, float]:
        """Each metric's median over the variant's repeats at ``load``."""
        runs = [r for r in self.runs if r.start.variant.name == variant and r.load == load]
        return {m.key: statistics.median(r.values[m.key] for r in runs) for m in METRICS
                if runs and all(m.key in r.values for r in runs)}

    def suspects(self) -> list[Suspect]:
        """Runs far off their variant's median at their load (judged metrics, 3 repeats or more)."""
        out = []
        for r in self.runs:
            if sum(x.load == r.load and x.start.variant == r.start.variant for x in self.runs) < 3:
                continue
            medians = self.medians(r.start.variant.name, r.load)
            for m in METRICS:
                if m.judged and m.key in medians and abs(r.values[m.key] / medians[m.key] - 1) > SUSPECT:
                    out.append(Suspect(r, m, r.values[m.key], medians[m.key]))
        return out

    def ratio(self, variant: str, load: Load, metric: str, baseline: str = "default") -> Ratio | None:
        return next((r for r in self.ratios if r.variant == variant and r.load == load and r.metric.key == metric
                     and r.baseline == baseline), None)

    def to_dict(self) -> dict[str, Any]:
        p = self.plan
        return {
            "kind": "mla-tune/bench-serve", "schema_version": 1, "complete": self.complete,
            "environment": dict(self.environment), "profile": str(p.profile), "backend": p.backend,
            "model": p.model, "dummy_weights": p.dummy_weights, "repeats": p.repeats,
            "level": f"family-wise {LEVEL:.0%} per judged metric over its {len(comparisons(p)) * len(p.loads)} "
                     "(comparison, load) pairs (Bonferroni)",
            "judged_metrics": [m.key for m in METRICS if m.judged], "profile_sha256": p.profile_sha256,
            "client": "vllm bench serve (random dataset, --ignore-eos, --request-rate inf)",
            "variants": [{"name": v.name, "description": v.description} for v in p.variants],
            "notes": list(p.notes),
            "loads": [{
                "concurrency": x.concurrency, "input_len": x.input_len, "output_len": x.output_len,
                "num_prompts": x.num_prompts, "shapes": list(x.shapes),
                "medians": {v.name: {k: round_sig(val, 5) for k, val in self.medians(v.name, x).items()}
                            for v in p.variants},
                "ratios": {v.name: {m.key: _ratio_dict(self.ratio(v.name, x, m.key)) for m in METRICS}
                           for v in p.variants[1:]},
                **({"profile_vs_flags": {m.key: _ratio_dict(self.ratio("profile", x, m.key, "flags"))
                                         for m in METRICS}} if ("profile", "flags") in comparisons(p) else {}),
            } for x in p.loads],
            "runs": [{"repeat": r.start.repeat + 1, "variant": r.start.variant.name, "order": r.start.index + 1,
                      "load": r.load.label, "result": r.path} for r in self.runs],
            "suspect_runs": [{"result": x.run.path, "metric": x.metric.key, "value": round_sig(x.value, 5),
                              "variant_median": round_sig(x.median, 5), "off": round_sig(x.off, 3)}
                             for x in self.suspects()],
        }


def _ratio_dict(r: Ratio | None) -> dict[str, Any] | None:
    if r is None:
        return None
    out: dict[str, Any] = {"ratio": round_sig(r.ratio, 5), "repeats": r.repeats, "verdict": r.verdict}
    if r.repeats >= 2:
        out.update(ci=[round_sig(r.low, 5), round_sig(r.high, 5)], ci_level=round_sig(r.level, 5))
    more = r.repeats_to_decide()
    if more is not None:
        out["repeats_to_decide"] = more
    return out


def number(v: float) -> str:
    """A metric value as printed: whole tokens per second, latencies to 4 digits."""
    return f"{v:.0f}" if abs(v) >= 1000 else f"{v:.4g}"


def values_of(result: Mapping[str, Any]) -> dict[str, float]:
    """The METRICS of one of vLLM's result JSONs (those it has, finite)."""
    out = {}
    for m in METRICS:
        v = result.get(m.key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0:
            out[m.key] = float(v)
    return out


def comparisons(plan: BenchPlan) -> list[tuple[str, str]]:
    """(variant, baseline) pairs the summary judges: every variant against vLLM's default, and the profile against
    the flags where both run."""
    names = [v.name for v in plan.variants]
    out = [(v, "default") for v in names if v != "default"]
    return out + ([("profile", "flags")] if "profile" in names and "flags" in names else [])


def summarize(plan: BenchPlan, runs: Sequence[RunResult], environment: Mapping[str, str]) -> Summary:
    ratios = []
    pairs_ = comparisons(plan)
    level = familywise_level(len(pairs_) * len(plan.loads), LEVEL)  # per metric
    for variant, baseline in pairs_:
        for load in plan.loads:
            pairs = _pairs(runs, variant, load, baseline)
            for m in METRICS:
                both = [(b[m.key], x[m.key]) for b, x in pairs if m.key in b and m.key in x]
                if not both:
                    continue
                base, cand = zip(*both)
                # paired_speedup gives baseline/candidate: the baseline over the variant for latencies (above 1:
                # the variant is faster), the variant over the baseline for throughput
                ps = paired_speedup(cand, base, level) if m.higher_is_better else paired_speedup(base, cand, level)
                ratios.append(Ratio(variant, load, m, ps.speedup, ps.ci_low, ps.ci_high, ps.rounds, level, baseline))
    planned = len(plan.starts()) * len(plan.loads)
    return Summary(plan, tuple(runs), tuple(ratios), dict(environment), len(runs) == planned)


def _pairs(runs: Sequence[RunResult], variant: str, load: Load, baseline: str = "default"
           ) -> list[tuple[Mapping[str, float], Mapping[str, float]]]:
    by = {(r.start.repeat, r.start.variant.name): r.values for r in runs if r.load == load}
    return [(by[(rep, baseline)], by[(rep, variant)]) for rep in sorted({k[0] for k in by})
            if (rep, baseline) in by and (rep, variant) in by]


__all__ = ["HEADLINE", "LEVEL", "METRICS", "Metric", "Ratio", "RunResult", "Summary", "Suspect", "comparisons",
           "number", "summarize", "values_of"]
