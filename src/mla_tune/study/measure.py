"""One config per shape of a study, measured through a runner: the unit of a trial and of a confirmation round."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..records import ShapeResult, TrialResult
from ..runners import Runner
from ..space_auto import split_config
from ..stats import round_sig
from ..types import Case, Measurement, freeze_params
from ..workloads import WorkloadShape
from .plan import StudyTarget


@dataclass(frozen=True)
class SetMeasurement:
    """Each shape's measurement in the study's order, up to and including the first that failed."""

    measured: tuple[tuple[WorkloadShape, dict[str, Any], Measurement], ...]  # (shape, config, measurement)

    @property
    def failure(self) -> tuple[WorkloadShape, Measurement] | None:
        """The shape that failed and its measurement, or None."""
        ws, _, m = self.measured[-1]
        return None if m.ok else (ws, m)

    @property
    def total_ms(self) -> float | None:
        """The weighted sum of the medians (one shape: its median); None if a shape failed."""
        if self.failure is not None:
            return None
        return sum(ws.weight * m.median_ms for ws, _, m in self.measured)

    @property
    def n_samples(self) -> int:
        return sum(len(m.samples_ms) for _, _, m in self.measured)

    def trial_result(self, provenance: dict[str, Any]) -> tuple[TrialResult, float | None]:
        """What a trial stores of it, and the trial's value (None: failed). One shape's measurement is stored
        flattened into the trial; several, or a failure, by spec."""
        shapes = {ws.spec: ShapeResult.from_measurement(m, config) for ws, config, m in self.measured}
        if self.failure is not None:
            ws, m = self.failure
            return TrialResult(status=m.status.value, message=f"{ws.spec}: {m.message}", provenance=provenance,
                               shapes=shapes), None
        value = round_sig(self.total_ms)  # type: ignore[arg-type]
        if len(shapes) == 1:
            return TrialResult(status="ok", provenance=provenance, measurement=next(iter(shapes.values()))), value
        return TrialResult(status="ok", provenance=provenance, shapes=shapes), value


def measure_set(runner: Runner, target: StudyTarget, configs: Sequence[dict[str, Any]]) -> SetMeasurement:
    """Measure ``configs[i]`` on the study's shape ``i``, stopping at the first failure."""
    r = target.request
    out = []
    for ws, config in zip(target.shapes, configs):
        backend, params = split_config(r.backend, config)  # an auto config names the backend it runs on
        m = runner.measure(Case(backend, ws.shape, r.dims, freeze_params(params), r.kv_cache_dtype))
        out.append((ws, config, m))
        if not m.ok:
            break
    return SetMeasurement(tuple(out))


__all__ = ["SetMeasurement", "measure_set"]
