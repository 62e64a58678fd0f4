"""Two tuning tables side by side, per shape: both settings, both confirmed results, where they disagree (pure)."""

from __future__ import annotations

from dataclasses import dataclass

from ..space_auto import AUTO, BACKEND
from ..types import ParamValue
from .landscape import Landscape, Source, Verdict


@dataclass(frozen=True)
class Disagreement:
    """One knob set differently (``None``: that side's config does not set it)."""

    knob: str
    a: ParamValue | None
    b: ParamValue | None


@dataclass(frozen=True)
class ShapeDiff:
    """One shape (or mix) of either table; ``a``/``b`` None where only the other table has it."""

    label: str
    a: Verdict | None
    b: Verdict | None
    disagreements: tuple[Disagreement, ...]

    @property
    def status(self) -> str:
        """``only A``, ``only B``, ``same`` (same settings, same tuned/failed state) or ``differ``."""
        if self.a is None or self.b is None:
            return "only A" if self.b is None else "only B"
        if self.disagreements or self.a.tuned != self.b.tuned or self.a.failed != self.b.failed:
            return "differ"
        return "same"

    @property
    def latency_ratio(self) -> float | None:
        """B's deployed latency over A's (below 1: B runs this shape faster), as the tables' medians say."""
        if self.a is None or self.b is None or not self.a.best_ms or not self.b.best_ms:
            return None
        return self.b.best_ms / self.a.best_ms


@dataclass(frozen=True)
class Side:
    """What one table is: its file, engine and provenance."""

    source: Source
    backend: str
    engine: str


@dataclass(frozen=True)
class TableDiff:
    a: Side
    b: Side
    rows: tuple[ShapeDiff, ...]  # A's order, then shapes only B has
    header: tuple[Disagreement, ...]  # backend, model, GPU, vLLM, torch, runner where they differ

    def count(self, status: str) -> int:
        return sum(1 for r in self.rows if r.status == status)


def diff_tables(a: Landscape, b: Landscape) -> TableDiff:
    """Pair the entries of ``a`` and ``b`` by shape (``mix:<workload>`` for mix entries)."""
    a_rows = {s.label: s.verdict for s in a.shapes}
    b_rows = {s.label: s.verdict for s in b.shapes}
    labels = list(a_rows) + [x for x in b_rows if x not in a_rows]
    # Against an ``--backend auto`` table, a one-backend table's settings name their backend too, so that the same
    # backend with the same settings compares equal.
    implied = (a.backend, b.backend) if AUTO in (a.backend, b.backend) else (None, None)
    rows = tuple(ShapeDiff(x, a_rows.get(x), b_rows.get(x), _disagreements(a_rows.get(x), b_rows.get(x), *implied))
                 for x in labels)
    return TableDiff(Side(a.source, a.backend, a.engine), Side(b.source, b.backend, b.engine), rows, _header(a, b))


def _disagreements(a: Verdict | None, b: Verdict | None, a_backend: str | None = None,
                   b_backend: str | None = None) -> tuple[Disagreement, ...]:
    if a is None or b is None:
        return ()
    out = []
    many = max(len(a.params), len(b.params)) > 1
    for i in range(max(len(a.params), len(b.params))):
        ca = _with_backend(dict(a.params[i]) if i < len(a.params) else {}, a_backend)
        cb = _with_backend(dict(b.params[i]) if i < len(b.params) else {}, b_backend)
        for knob in sorted(set(ca) | set(cb)):
            if ca.get(knob) != cb.get(knob):
                out.append(Disagreement(f"[{i}].{knob}" if many else knob, ca.get(knob), cb.get(knob)))
    return tuple(out)


def _with_backend(config: dict, backend: str | None) -> dict:
    """``config`` naming its decode backend, where it does not and its table is one backend's."""
    if backend is None or backend == AUTO or BACKEND in config:
        return config
    return {BACKEND: backend, **config}


def _header(a: Landscape, b: Landscape) -> tuple[Disagreement, ...]:
    pairs = [("backend", a.backend, b.backend), ("model", f"{a.model} tp{a.tp}", f"{b.model} tp{b.tp}"),
             ("kv_cache_dtype", a.kv_cache_dtype, b.kv_cache_dtype), ("gpu", a.source.gpu, b.source.gpu),
             ("vllm", a.source.vllm, b.source.vllm), ("torch", a.source.torch, b.source.torch),
             ("runner", a.source.runner, b.source.runner)]
    return tuple(Disagreement(k, x, y) for k, x, y in pairs if x != y)
