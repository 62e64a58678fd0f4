"""``flags``: each table entry's params as the settings of a given vLLM, with what a global value costs.

vLLM's knobs are global per deployment, while a table entry is one batch shape. So next to an entry's flags this
says, for each value that differs from vLLM's default, what it does to the table's other shapes (from their
measured configs) and which values only the plugin can apply per batch size (``mla-tune deploy``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .. import batch_spec
from ..knobs import Situation, knob
from ..space_auto import AUTO, BACKEND, split_config
from ..tables.entry import TableEntry, entries
from ..vllm_adapters import Adapter
from .deploy import Source, _sources, served_space
from .settings import ServingSettings, serving_settings


@dataclass(frozen=True)
class ValueCost:
    """``knob=value`` applied to every shape: its latency ratio on each other shape where it matters."""

    knob: str
    value: object
    per_batch: bool  # the plugin can apply it per decode batch instead of globally
    ratios: tuple[tuple[str, float | None], ...]  # (shape, own best ms / ms with this value); None: not measured

    @property
    def worst(self) -> tuple[str, float] | None:
        known = [(s, r) for s, r in self.ratios if r is not None]
        return min(known, key=lambda x: x[1]) if known else None


@dataclass(frozen=True)
class EntryFlags:
    label: str
    entry: TableEntry
    settings: ServingSettings
    costs: tuple[ValueCost, ...]


def _cost(name: str, value: object, me: str, sources: list[Source], space: Any) -> ValueCost:
    ratios = []
    for s in sources:
        if s.spec == me or name not in s.chosen or not knob(name).matters(Situation(s.shape, s.chosen, space)):
            continue
        own, other = s.latency(s.chosen), s.priced(name, value, space)
        ratios.append((s.spec, round(own / other, 3) if own and other else None))
    return ValueCost(name, value, knob(name).per_batch, tuple(ratios))


def table_flags(table: Mapping[str, Any], adapter: Adapter) -> list[EntryFlags]:
    if table["backend"] == AUTO:
        return _auto_flags(table, adapter)
    sources, _ = _sources(table)
    space = served_space(adapter, table["backend"], table["kv_cache_dtype"], sources)
    out = []
    for e in entries(table):
        if e.shape is None:  # a mix entry: one config per shape, shown per shape
            for (spec, _), p, d in zip(e.shapes, e.params, e.default_params):
                out.append(EntryFlags(spec, e, serving_settings(table["backend"], p, d, adapter), ()))
            continue
        if not e.params:  # not confirmed yet: nothing to serve
            continue
        params, defaults = e.params[0], e.default_params[0]
        changed = {k: v for k, v in params.items() if defaults.get(k) != v}
        costs = tuple(_cost(k, v, e.shape, sources, space) for k, v in sorted(changed.items()))
        out.append(EntryFlags(e.label, e, serving_settings(table["backend"], params, defaults, adapter), costs))
    return out


def _auto_flags(table: Mapping[str, Any], adapter: Adapter) -> list[EntryFlags]:
    """An ``auto`` table: each config's settings on the backend it names, a setting only where it differs from
    that backend's own default on the shape. No costs: those price one knob within one backend's landscape, and the
    backend itself is one setting per deployment (``deploy`` takes one backend's table)."""
    out = []
    for e in entries(table):
        specs = [e.shape] if e.shape is not None else [spec for spec, _ in e.shapes]
        for spec, p, d in zip(specs, e.params, e.default_params):
            backend, own = split_config(AUTO, p)
            if d.get(BACKEND) != backend:  # vLLM's default is another backend's: its own defaults need no setting
                d = {BACKEND: backend, **adapter.search_space(backend, table["kv_cache_dtype"]).default_config(
                    batch_spec.parse(spec))}
            label = spec if len(specs) > 1 else e.label
            out.append(EntryFlags(label, e, serving_settings(backend, own, split_config(AUTO, d)[1], adapter), ()))
    return out
