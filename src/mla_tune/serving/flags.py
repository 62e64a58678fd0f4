"""``flags``: each table entry's params as the settings of a given vLLM, with what a global value costs.

vLLM's knobs are global per deployment, while a table entry is one batch shape. So next to an entry's flags this
says, for each value that differs from vLLM's default, what it does to the table's other shapes (from their
measured configs) and which values only the plugin can apply per batch size (``mla-tune deploy``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..knobs import Situation, knob
from ..space import load_space
from ..tables.table import entry_label
from ..vllm_adapters import Adapter
from .deploy import Source, _sources
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
    entry: Mapping[str, Any]
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
    space = load_space(table["backend"]).for_kv(table["kv_cache_dtype"])
    sources, _ = _sources(table)
    out = []
    for e in table["entries"]:
        params, defaults = e.get("params"), e.get("default_params")
        if not isinstance(params, dict):  # a mix entry: one config per shape, shown per shape
            for spec, p, d in zip([x["spec"] for x in e.get("shapes", [])], params or [], defaults or []):
                out.append(EntryFlags(spec, e, serving_settings(table["backend"], p, d, adapter), ()))
            continue
        changed = {k: v for k, v in params.items() if (defaults or {}).get(k) != v}
        costs = tuple(_cost(k, v, e.get("shape", ""), sources, space) for k, v in sorted(changed.items()))
        out.append(EntryFlags(entry_label(e), e, serving_settings(table["backend"], params, defaults, adapter),
                              costs))
    return out
