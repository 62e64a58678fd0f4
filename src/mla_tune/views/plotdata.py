"""What the pictures show, as numbers (pure): heatmap grids and per-shape bars of speedup over vLLM's default.

A speedup here is the latency of vLLM's default config over that of another config at the same shape, from the
landscape's medians (a table's trial medians, a sweep's sample medians); a table's confirmed interval is carried
beside it, never mixed into it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..tables.landscape import Config, Interval, Landscape, ShapeLandscape
from ..types import ParamValue


@dataclass(frozen=True)
class Panel:
    """One heatmap: a cell per (row, column); None where nothing was measured."""

    title: str
    cells: tuple[tuple[float | None, ...], ...]
    notes: tuple[tuple[str, ...], ...] = ()  # per cell, the knob's value there (where a cell is a chosen config)


@dataclass(frozen=True)
class Heatmap:
    """Rows are batch sizes; columns context lengths (a panel per knob value), or, where every shape has the
    same context, the knob's values themselves (one panel)."""

    knob: str
    default: str  # vLLM's default value of the knob (where it is one value over the grid)
    rows: tuple[str, ...]
    columns: tuple[str, ...]
    column_title: str
    panels: tuple[Panel, ...]
    chosen_column: bool = False  # the last column is the deployed (or fastest) config, not a knob value


def _size(n: int) -> str:
    return f"{n // 1024}k" if n % 1024 == 0 else str(n)


def _decode_grid(ls: Landscape) -> dict[tuple[int, int], ShapeLandscape]:
    """Uniform one-token decode batches by (batch size, context): the shapes a (batch, context) grid can hold."""
    grid = {}
    for s in ls.shapes:
        shape = s.shape
        if shape is None or s.default is None or len(set(shape.requests)) != 1 or shape.max_q_len != 1:
            continue
        grid[(len(shape.requests), shape.max_kv_len)] = s
    return grid


def _with(config: Config, knob: str, value: ParamValue) -> Config:
    return tuple(sorted({**dict(config), knob: value}.items()))


Cell = tuple[float | None, str]  # a speedup (None: none to show) and the text under it


def heatmaps(ls: Landscape) -> list[Heatmap]:
    """Per knob measured at more than one value on the decode grid: the speedup of each value (the other knobs
    at vLLM's default), then the table's deployed choice (confirmed) or a sweep's fastest config."""
    grid = _decode_grid(ls)
    if len(grid) < 2:
        return []
    batches = tuple(sorted({b for b, _ in grid}))
    contexts = tuple(sorted({c for _, c in grid}))
    rows = tuple(map(str, batches))
    out = []
    for knob in ls.knobs:
        values = _values(grid.values(), knob)
        defaults = {dict(s.default).get(knob) for s in grid.values()}
        if not [v for v in values if {v} != defaults]:
            continue
        default = ", ".join(map(str, sorted(defaults, key=str)))
        chosen = (lambda s, knob=knob: _chosen(ls.kind, knob, s))
        title = ("deployed: confirmed speedup, value" if ls.kind == "table" else "fastest measured: speedup, value")
        if len(contexts) == 1:  # one column per panel would waste the page: the values become the columns
            fns = [lambda s, v=v, knob=knob: _at(s, knob, v) for v in values] + [chosen]
            cells = [[fn(grid[(b, contexts[0])]) if (b, contexts[0]) in grid else (None, "") for fn in fns]
                     for b in batches]
            columns = tuple(f"{v}{' (default)' if {v} == defaults else ''}" for v in values) + (
                "deployed" if ls.kind == "table" else "fastest",)
            out.append(Heatmap(knob, default, rows, columns, f"{knob}; last column: {'the deployed setting' if ls.kind == 'table' else 'the fastest config'}, its speedup "
                               f"{'(confirmed) ' if ls.kind == 'table' else ''}and value",
                               (_panel(f"context {_size(contexts[0])}", cells),), True))
            continue
        panels = [_panel(f"{knob} = {v}", _cells(batches, contexts, grid, lambda s, v=v, knob=knob: _at(s, knob, v)))
                  for v in values if {v} != defaults]
        panels.append(_panel(title, _cells(batches, contexts, grid, chosen)))
        out.append(Heatmap(knob, default, rows, tuple(_size(c) for c in contexts), "context (tokens)",
                           tuple(panels)))
    return out


def _panel(title: str, cells: list[list[Cell]]) -> Panel:
    return Panel(title, tuple(tuple(x for x, _ in row) for row in cells),
                 tuple(tuple(n for _, n in row) for row in cells))


def _cells(batches, contexts, grid, fn) -> list[list[Cell]]:
    return [[fn(grid[(b, c)]) if (b, c) in grid else (None, "") for c in contexts] for b in batches]


def _values(shapes, knob: str) -> list[ParamValue]:
    seen: dict[str, ParamValue] = {}
    for s in shapes:
        for p in s.points:
            if knob in dict(p.config):
                seen.setdefault(str(dict(p.config)[knob]), dict(p.config)[knob])
    # numbers in order, then names ("auto" after the split counts)
    return sorted(seen.values(), key=lambda v: (isinstance(v, str), v if not isinstance(v, str) else 0, str(v)))


def _at(s: ShapeLandscape, knob: str, value: ParamValue) -> Cell:
    """The speedup of ``knob=value`` with the other knobs at vLLM's default; a failure says so."""
    config = _with(s.default, knob, value)
    failed = dict(s.failed)
    if s.default_ms is None and s.default in failed:
        return None, "default failed"
    if config in failed:
        return None, failed[config]
    return s.speedup(config), ""


def _chosen(kind: str, knob: str, s: ShapeLandscape) -> Cell:
    if kind == "table":
        v = s.verdict
        if v is None or v.failed or not v.params or v.confirmed is None:
            return None, "fails" if v is not None and v.failed else ""
        return v.confirmed.speedup, str(dict(v.params[0]).get(knob)) if v.tuned else "default"
    if not s.points or s.default_ms is None:
        return None, "default failed" if s.failed else ""
    best = s.points[0]
    return s.speedup(best.config), str(dict(best.config).get(knob))


@dataclass(frozen=True)
class Bar:
    label: str  # the config's changes from vLLM's default
    speedup: float
    role: str  # "default", "deployed", "candidate" (best that did not clear noise) or "other"


@dataclass(frozen=True)
class ShapeBars:
    label: str
    bars: tuple[Bar, ...]  # fastest first
    confirmed: tuple[str, Interval] | None  # (role, interval) of the table's deployed setting or best candidate
    hidden: int  # configs left out to keep the chart readable (the slowest)
    failed: int  # configs that did not run here
    failures: tuple[str, ...] = ()  # their statuses (oom, error, ...), each once


def change_label(config: Config, default: Config) -> str:
    d = dict(default)
    changes = [f"{k}={v}" for k, v in config if d.get(k) != v]
    return " ".join(changes) if changes else "vLLM default"


def shape_bars(ls: Landscape, top: int = 10) -> list[ShapeBars]:
    """Per shape with a measured default: the ``top`` fastest configs' speedups, plus the default and the
    table's deployed setting and best candidate wherever they rank."""
    out = []
    for s in ls.shapes:
        if s.default is None or (s.default_ms is None and not s.failed):
            continue  # a mix entry, or a table entry without a landscape
        if s.default_ms is None:  # vLLM's default failed here: the shape is listed, with nothing to compare
            out.append(ShapeBars(s.label, (), None, len(s.points), len(s.failed), _statuses(s)))
            continue
        v = s.verdict
        deployed = v.params[0] if v is not None and v.tuned and len(v.params) == 1 else None
        candidate = v.candidate[0][0] if v is not None and v.candidate and len(v.candidate[0]) == 1 else None
        role = {c: r for c, r in ((candidate, "candidate"), (deployed, "deployed"), (s.default, "default")) if c}
        keep = [p for i, p in enumerate(s.points) if i < top or p.config in role]
        bars = tuple(Bar(change_label(p.config, s.default), s.default_ms / p.ms, role.get(p.config, "other"))
                     for p in keep)
        confirmed = None
        if v is not None and v.tuned and v.confirmed is not None:
            confirmed = ("deployed", v.confirmed)
        elif v is not None and v.candidate is not None:
            confirmed = ("candidate", v.candidate[1])
        out.append(ShapeBars(s.label, bars, confirmed, len(s.points) - len(keep), len(s.failed), _statuses(s)))
    return out


def _statuses(s: ShapeLandscape) -> tuple[str, ...]:
    return tuple(sorted({status for _, status in s.failed}))
