"""One tuning-table entry as a typed record: what a study's confirmation says of one shape (or one traffic mix),
read from and written to the table's YAML here and nowhere else.

An entry is one of five kinds, each made by its constructor below: not confirmed yet; failing on every config;
tuned (a confirmed winner); vLLM's default kept (no winner, the best candidate shown); vLLM's default kept because
the winner runs the default's kernels. The loader (``export.check_table``) checks every value first; ``from_dict``
reads a checked entry, ``to_dict`` writes what ``from_dict`` reads back equal.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..types import ParamValue

Config = Mapping[str, ParamValue]


@dataclass(frozen=True)
class Trials:
    """How the study spent its trials: measured, failed, and reused (a config that runs another's kernels)."""

    measured: int
    failed: int
    reused: int

    def to_dict(self) -> dict[str, int]:
        return {"measured": self.measured, "failed": self.failed, "reused": self.reused}


@dataclass(frozen=True)
class Interval:
    """A speedup over vLLM's default with its confidence interval at ``level`` (None: kept without its rounds)."""

    speedup: float
    ci: tuple[float, float] | None = None
    level: float | None = None

    @property
    def low(self) -> float | None:
        return self.ci[0] if self.ci is not None else None

    @property
    def high(self) -> float | None:
        return self.ci[1] if self.ci is not None else None

    def text(self) -> str:
        return f"x{self.speedup:.3f}" + (f" [{self.ci[0]:.3f}, {self.ci[1]:.3f}]" if self.ci is not None else "")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"speedup": self.speedup}
        if self.ci is not None:
            out.update(ci=list(self.ci), ci_level=self.level)
        return out

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> Interval:
        ci = d.get("ci")
        return Interval(float(d["speedup"]), (float(ci[0]), float(ci[1])) if ci else None, d.get("ci_level"))


@dataclass(frozen=True)
class BestCandidate:
    """The fastest candidate of an entry that keeps vLLM's default: shown, not served."""

    params: tuple[Config, ...]
    latency_ms: float
    interval: Interval

    def to_dict(self) -> dict[str, Any]:
        return {"params": _one_or_list(self.params), "latency_ms": self.latency_ms, **self.interval.to_dict()}


@dataclass(frozen=True)
class TableEntry:
    trials: Trials
    tuned: bool
    shape: str | None = None  # a per-shape entry's batch spec ...
    kind: str | None = None  # ... and its class (decode, spec_decode, mixed, prefill)
    workload: str | None = None  # a mix entry's workload ...
    shapes: tuple[tuple[str, float], ...] = ()  # ... and its (spec, weight) shapes
    params: tuple[Config, ...] = ()  # what to serve: one config per shape (per-shape entries have one)
    default_params: tuple[Config, ...] = ()  # vLLM's default as it ran, per shape
    note: str = ""
    error: str | None = None  # why every config failed, vLLM's default included
    default_ms: float | None = None
    best_ms: float | None = None
    confirmed: Interval | None = None  # the served config's speedup (x1 where the default is kept)
    samples: Mapping[str, int] | None = None  # samples behind default_ms and best_ms
    best_candidate: BestCandidate | None = None
    landscape: tuple[tuple[Config, float], ...] = ()  # every measured config's trial time: deploy prices with it

    @property
    def label(self) -> str:
        """How the entry is named: its shape, or ``mix:<workload>``."""
        return self.shape or f"mix:{self.workload}"

    @property
    def confirmed_yet(self) -> bool:
        return bool(self.default_params)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"trials": self.trials.to_dict()}
        if self.shape is not None:
            out.update(shape=self.shape, kind=self.kind)
        else:
            out.update(workload=self.workload, shapes=[{"spec": s, "weight": w} for s, w in self.shapes])
        if self.landscape:
            out["landscape"] = [{"params": dict(c), "trial_ms": ms} for c, ms in self.landscape]
        out["tuned"] = self.tuned
        if self.default_params:
            out["default_params"] = _one_or_list(self.default_params)
        if self.params:
            out["params"] = _one_or_list(self.params)
        if self.error is not None:
            out["error"] = self.error
        if self.note:
            out["note"] = self.note
        if self.default_ms is not None:
            out["latency_ms"] = {"default": self.default_ms, "best": self.best_ms}
        if self.confirmed is not None:
            out.update(self.confirmed.to_dict())
        if self.samples is not None:
            out["samples"] = dict(self.samples)
        if self.best_candidate is not None:
            out["best_candidate"] = self.best_candidate.to_dict()
        return out

    @staticmethod
    def from_dict(e: Mapping[str, Any]) -> TableEntry:
        """An entry of a table ``export.load_table`` checked (its keys and values are valid)."""
        t = e["trials"]
        ms = e.get("latency_ms") or {}
        best = e.get("best_candidate")
        return TableEntry(
            trials=Trials(int(t.get("measured", 0)), int(t.get("failed", 0)), int(t.get("reused", 0))),
            tuned=bool(e["tuned"]), shape=e.get("shape"), kind=e.get("kind"), workload=e.get("workload"),
            shapes=tuple((str(x["spec"]), x["weight"]) for x in e.get("shapes") or ()),
            params=_configs(e.get("params")), default_params=_configs(e.get("default_params")),
            note=str(e.get("note", "")), error=e.get("error"),
            default_ms=ms.get("default"), best_ms=ms.get("best"),
            confirmed=Interval.from_dict(e) if e.get("speedup") is not None else None,
            samples=dict(e["samples"]) if e.get("samples") is not None else None,
            best_candidate=BestCandidate(_configs(best["params"]), best["latency_ms"], Interval.from_dict(best))
            if best else None,
            landscape=tuple((dict(x["params"]), float(x["trial_ms"])) for x in e.get("landscape") or ()))


def entries(table: Mapping[str, Any]) -> list[TableEntry]:
    """A loaded table's entries as records."""
    return [TableEntry.from_dict(e) for e in table["entries"]]


def _configs(value: Any) -> tuple[Config, ...]:
    if value is None:
        return ()
    return tuple(dict(c) for c in value) if isinstance(value, list) else (dict(value),)


def _one_or_list(configs: Sequence[Config]) -> Any:
    """One shape's config as a mapping, a mix's as a list (the table's YAML form)."""
    return dict(configs[0]) if len(configs) == 1 else [dict(c) for c in configs]


__all__ = ["BestCandidate", "Interval", "TableEntry", "Trials", "entries"]
