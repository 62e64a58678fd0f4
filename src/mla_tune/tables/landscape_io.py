"""Reading tuning tables and sweep files into ``landscape`` records (each file checked by its own reader)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from .. import _yaml, batch_spec
from ..errors import DataFileError
from ..knobs import knobs_for
from ..vllm_adapters import recorded_adapter
from ..stats import block_speedup, blocks_of
from ..recordings import read_sweep
from .export import load_table
from .landscape import Config, Landscape, Point, ShapeLandscape, Source, Verdict, freeze
from .entry import TableEntry, entries


def read_inputs(paths: Iterable[Path]) -> list[Landscape]:
    """Tables (any name) and sweeps (``.jsonl``; those of one GPU, backend and model merged into one landscape)."""
    paths = [Path(p) for p in paths]
    tables = [read_table(p) for p in paths if p.suffix != ".jsonl"]
    sweeps = [p for p in paths if p.suffix == ".jsonl"]
    return tables + (read_sweeps(sweeps) if sweeps else [])


def read_table(path: Path) -> Landscape:
    """A tuning table as a landscape: its entries' trial medians per config and its verdicts."""
    t = load_table(path)
    m = t["model"]
    return Landscape("table", Source.from_provenance(str(path), t["provenance"]), t["backend"], str(m["model"]),
                     int(m["tp"]), t["kv_cache_dtype"], tuple(_table_shape(e) for e in entries(t)),
                     tuple(k.name for k in knobs_for(t["backend"])))


def _table_shape(e: TableEntry) -> ShapeLandscape:
    defaults = tuple(freeze(c) for c in e.default_params)
    best = e.best_candidate
    verdict = Verdict(
        tuned=e.tuned, params=tuple(freeze(c) for c in e.params) or defaults, default_params=defaults,
        default_ms=e.default_ms, best_ms=e.best_ms,
        confirmed=e.confirmed,
        candidate=(tuple(freeze(c) for c in best.params), best.interval) if best else None,
        note=e.note, error=e.error)
    points = sorted((Point(freeze(c), ms) for c, ms in e.landscape), key=lambda p: p.ms)
    default = defaults[0] if e.shape is not None and defaults else None
    return ShapeLandscape(e.label, default, tuple(points), (), verdict)


def read_sweeps(paths: Iterable[Path]) -> list[Landscape]:
    """One landscape per (GPU, vLLM, runner, backend, model, TP, KV dtype) over all ``paths``: each config's time
    (from its pairs with the default where the sweep recorded pairs; else the median of its recordings' medians),
    configs that failed in every recording kept with their status; the default is vLLM's config as it resolves for
    each shape."""
    groups: dict[tuple, tuple[list[Source], dict[str, list[dict[str, Any]]]]] = {}
    for path in paths:
        header, records = read_sweep(path)
        src = Source.from_provenance(str(path), header["environment"], header.get("date"))
        for i, r in enumerate(records):
            model = r["model"]
            name = _yaml.expect(path, f"measurement {i + 1}.model.model", model.get("model"), str, "a model name")
            tp = _yaml.integer(path, f"measurement {i + 1}.model.tp", model.get("tp"), high=1024)
            key = (src.gpu, src.vllm, src.runner, r["backend"], name, tp, r["kv_cache_dtype"])
            sources, shapes = groups.setdefault(key, ([], {}))
            if src not in sources:
                sources.append(src)
            shapes.setdefault(r["shape"], []).append(r)
    if not groups:
        raise DataFileError(", ".join(map(str, paths)), "", "no measurements in these sweep files")
    return [_sweep_landscape(key, sources, shapes) for key, (sources, shapes) in groups.items()]


def _sweep_landscape(key: tuple, sources: list[Source], shapes: dict[str, list[dict[str, Any]]]) -> Landscape:
    _, _, _, backend, model, tp, kv = key
    src = sources[0]
    if len(sources) > 1:
        dates = sorted(s.date for s in sources if s.date)
        src = replace(src, path=", ".join(s.path for s in sources), date=dates[-1] if dates else None)
    space = recorded_adapter(src.vllm).search_space(backend, kv)
    # what a recording made before a knob existed ran with (knobs of the space only: a family that never graphs
    # the backend has no cuda_graphs to fill in)
    fill = {k.name: k.default(backend) for k in knobs_for(backend) if k.name in space}
    out = []
    for spec in sorted(shapes, key=_reading_order):
        runs: dict[Config, list[float]] = {}  # one median per recording (a sweep has one per round)
        ratios: dict[Config, list[float]] = {}  # recorded pairs: the config's speedup over the default in each
        refs: list[float] = []
        failed: dict[Config, str] = {}
        for r in shapes[spec]:
            config = freeze({**fill, **r["config"]})
            if r["status"] == "ok":
                runs.setdefault(config, []).append(statistics.median(r["samples_ms"]))
                ref = r.get("reference")
                if r.get("order") and ref and ref["status"] == "ok":
                    order = tuple(int(a) for a in r["order"])
                    blocks = blocks_of(order, (ref["samples_ms"], r["samples_ms"]))
                    ratios.setdefault(config, []).append(block_speedup(blocks, 0, 1)[0])
                    refs.append(statistics.median(ref["samples_ms"]))
            else:
                failed.setdefault(config, r["status"])
        # Pairs put every config on the default's scale (its median over the config's speedups in its pairs): the
        # configs' own medians come from recordings minutes apart. Sweeps of separate recordings keep their medians.
        paired = bool(refs) and set(ratios) == set(runs)
        points = {c: (statistics.median(refs) / math.exp(statistics.fmean(math.log(x) for x in ratios[c])) if paired
                      else float(statistics.median(ms))) for c, ms in runs.items()}
        failed = {c: status for c, status in failed.items() if c not in points}  # failed in every recording
        default = freeze({**fill, **space.default_config(batch_spec.parse(spec))})
        out.append(ShapeLandscape(spec, default, tuple(sorted((Point(c, ms) for c, ms in points.items()),
                                                              key=lambda p: p.ms)), tuple(failed.items())))
    return Landscape("sweep", src, backend, model, tp, kv, tuple(out), space.names)


def _reading_order(spec: str) -> tuple:
    """Decode batches by context then size, then the rest (as tables order their entries)."""
    shape = batch_spec.parse(spec)
    return (shape.max_q_len > 1, shape.max_kv_len, len(shape.requests), shape.num_tokens, spec)
