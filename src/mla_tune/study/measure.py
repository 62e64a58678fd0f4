"""One config per shape of a study, each recorded against vLLM's default: the unit of a trial.

Every shape is one paired recording (``Runner.measure_paired``): the config and vLLM's default for that shape,
sample by sample, so the trial's value compares configs measured under the same clock rather than recordings taken
minutes apart on a GPU whose power cap moves its clock by more than the gains being judged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..records import ShapeResult, TrialResult
from ..runners import Runner
from ..space_auto import split_config
from ..stats import round_sig
from ..types import Case, Measurement, PairStat, freeze_params
from ..workloads import WorkloadShape
from .plan import VALUE_KIND, StudyTarget


@dataclass(frozen=True)
class ShapeOutcome:
    """One shape of a trial: its weight, the config it ran, the config's measurement and its pair with the default
    (None when it failed)."""

    shape: WorkloadShape
    config: dict[str, Any]
    measurement: Measurement
    pair: PairStat | None
    recording: tuple[tuple[str, str], ...] = ()  # the recording's details: blocks, GPU seconds, clocks, events

    def result(self) -> ShapeResult:
        """What a trial stores: the config's measurement, its pair, and the recording's clock readings and share of
        readings under a clock event (``recording_`` keys among the details, beside the arm's own)."""
        m = self.measurement
        if self.recording:
            m = replace(m, details=tuple(sorted({**dict(m.details),
                                                 **{f"recording_{k}": v for k, v in self.recording}}.items())))
        return ShapeResult.from_measurement(m, self.config, self.pair)


@dataclass(frozen=True)
class SetMeasurement:
    """Each shape's outcome in the study's order, up to and including the first that failed, and the GPU seconds
    its recordings timed."""

    measured: tuple[ShapeOutcome, ...]
    gpu_s: float = 0.0

    @property
    def failure(self) -> tuple[WorkloadShape, Measurement] | None:
        """The shape that failed and its measurement, or None."""
        last = self.measured[-1]
        return None if last.measurement.ok and last.pair is not None else (last.shape, last.measurement)

    @property
    def relative(self) -> float | None:
        """The config's latency over vLLM's default's: per shape from its recording, weighted by each shape's
        share of the default's time for several shapes (a traffic mix). None if a shape failed."""
        if self.failure is not None:
            return None
        if len(self.measured) == 1:
            return 1 / self.measured[0].pair.speedup  # type: ignore[union-attr]
        ref = sum(o.shape.weight * o.pair.reference_ms for o in self.measured)  # type: ignore[union-attr]
        return sum(o.shape.weight * o.pair.paired_ms for o in self.measured) / ref  # type: ignore[union-attr]

    @property
    def reference_ms(self) -> float | None:
        """vLLM's default's time in these recordings: one shape's median, or the traffic-weighted sum."""
        if self.failure is not None:
            return None
        if len(self.measured) == 1:
            return self.measured[0].pair.reference_ms  # type: ignore[union-attr]
        return sum(o.shape.weight * o.pair.reference_ms for o in self.measured)  # type: ignore[union-attr]

    @property
    def paired_ms(self) -> float | None:
        """The config's time on the default's scale (``reference_ms`` x ``relative``)."""
        rel, ref = self.relative, self.reference_ms
        return None if rel is None or ref is None else rel * ref

    @property
    def n_samples(self) -> int:
        return sum(len(o.measurement.samples_ms) for o in self.measured)

    def trial_result(self, provenance: dict[str, Any]) -> tuple[TrialResult, float | None]:
        """What a trial stores of it, and the trial's value (``VALUE_KIND``; None: failed). One shape's measurement
        is stored flattened into the trial; several, or a failure, by spec."""
        shapes = {o.shape.spec: o.result() for o in self.measured}
        if self.failure is not None:
            ws, m = self.failure
            return TrialResult(status=m.status.value, message=f"{ws.spec}: {m.message}", provenance=provenance,
                               shapes=shapes), None
        value = round_sig(self.relative)  # type: ignore[arg-type]
        speedup = round_sig(1 / self.relative, 4)  # type: ignore[operator]
        if len(shapes) == 1:
            return TrialResult(status="ok", provenance=provenance, measurement=next(iter(shapes.values())),
                               speedup_vs_default=speedup), value
        return TrialResult(status="ok", provenance=provenance, shapes=shapes, speedup_vs_default=speedup), value


def cases_of(target: StudyTarget, configs: Sequence[dict[str, Any]]) -> list[Case]:
    """The runner's case for ``configs[i]`` on the study's shape ``i`` (an auto config names its backend)."""
    r = target.request
    out = []
    for ws, config in zip(target.shapes, configs):
        backend, params = split_config(r.backend, config)
        out.append(Case(backend, ws.shape, r.dims, freeze_params(params), r.kv_cache_dtype))
    return out


def measure_set(runner: Runner, target: StudyTarget, configs: Sequence[dict[str, Any]]) -> SetMeasurement:
    """Record ``configs[i]`` against vLLM's default on the study's shape ``i``, stopping at the first failure."""
    defaults = cases_of(target, target.default_configs())
    out, gpu_s = [], 0.0
    for ws, config, ref, case in zip(target.shapes, configs, defaults, cases_of(target, configs)):
        pm = runner.measure_paired([ref, case])
        gpu_s += pm.gpu_s
        arm, pair = pm.arms[1], pm.pairs[1]  # a failed default fails the arm too, saying so
        out.append(ShapeOutcome(ws, dict(config), arm, pair, pm.details))
        if pair is None:
            break
    return SetMeasurement(tuple(out), gpu_s)


__all__ = ["SetMeasurement", "ShapeOutcome", "VALUE_KIND", "cases_of", "measure_set"]
