"""Exhaustive sweeps: every distinct config of a space for every shape of a workload, with all raw samples.

A sweep file is JSON Lines (``.jsonl``): the first line is a header, every other line one measurement.

    {"kind": "mla-tune/sweep", "schema_version": 1, "date": "2026-11-24T23:00:00Z", "environment": {...},
     "backends": [{"name": "fa4", "kind": "prefill", "available": false, "reason": "..."}, ...]}
    {"backend": "FLASH_ATTN_MLA", "model": {...dims...}, "kv_cache_dtype": "auto", "shape": "64q1s4k",
     "config": {"cuda_graphs": true, ...}, "status": "ok", "samples_ms": [...], "rel_err": 0.0012,
     "details": {"block_size": "64", ...}, "message": ""}

``config`` is the full resolved config (see ``space.resolve``); ``model`` the MLA dims one GPU runs. Lines are
appended as they are measured, so an interrupted sweep resumes where it stopped. The replay runner reads these.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import DataFileError, UsageError
from .plan import dims_dict
from .runners import Runner
from .space import SearchSpace, config_key
from .stats import round_sig
from .types import Case, Environment, MLADims, Measurement, freeze_params
from .workloads import Workload

SWEEP_KIND = "mla-tune/sweep"


@dataclass(frozen=True)
class SweepProgress:
    done: int
    total: int
    shape: str
    status: str
    median_ms: float | None


def record_key(backend: str, dims: dict[str, Any], kv_cache_dtype: str, shape: str, config: dict) -> str:
    """Identity of one measurement in a sweep."""
    return json.dumps([backend, dims, kv_cache_dtype, shape, dict(config_key(config))], sort_keys=True)


def measurement_record(case: Case, spec: str, m: Measurement) -> dict[str, Any]:
    return {
        "backend": case.backend, "model": dims_dict(case.dims), "kv_cache_dtype": case.kv_cache_dtype,
        "shape": spec, "config": case.param_dict, "status": m.status.value,
        "samples_ms": [round_sig(x) for x in m.samples_ms], "message": m.message,
        "rel_err": None if m.rel_err is None else round_sig(m.rel_err, 3), "details": dict(m.details),
    }


def read_sweep(path: Path) -> tuple[dict[str, Any], Iterator[dict[str, Any]]]:
    """The header and the records of a sweep file; a bad line names the file and line number."""
    path = Path(path)
    lines = path.read_text().splitlines()
    if not lines:
        raise DataFileError(str(path), "line 1", "empty sweep file")
    header = _parse(path, 1, lines[0])
    if header.get("kind") != SWEEP_KIND or header.get("schema_version") != 1:
        raise DataFileError(str(path), "line 1", f"not an mla-tune sweep (kind {SWEEP_KIND}, schema_version 1)")
    try:
        Environment.from_dict(header["environment"])
    except (KeyError, TypeError, ValueError) as e:
        raise DataFileError(str(path), "line 1.environment", f"incomplete or missing ({e!r})") from e

    def records() -> Iterator[dict[str, Any]]:
        for i, line in enumerate(lines[1:], start=2):
            if line.strip():
                rec = _parse(path, i, line)
                for key in ("backend", "model", "kv_cache_dtype", "shape", "config", "status", "samples_ms"):
                    if key not in rec:
                        raise DataFileError(str(path), f"line {i}.{key}", "missing")
                yield rec

    return header, records()


def _parse(path: Path, lineno: int, line: str) -> dict[str, Any]:
    try:
        data = json.loads(line)
    except json.JSONDecodeError as e:
        # A line cut by a killed writer is the one error a resumable file must tolerate: say so.
        raise DataFileError(str(path), f"line {lineno}", f"not JSON ({e.msg})") from e
    if not isinstance(data, dict):
        raise DataFileError(str(path), f"line {lineno}", "expected a JSON object")
    return data


def _existing(path: Path, env: Environment) -> set[str]:
    if not path.exists() or path.stat().st_size == 0:
        return set()
    header, records = read_sweep(path)
    if header["environment"].get("gpu") != env.as_dict().get("gpu"):
        raise UsageError(f"{path} was recorded on {header['environment']['gpu']['name']}, not this GPU",
                         hint="write the sweep to another file")
    return {record_key(r["backend"], r["model"], r["kv_cache_dtype"], r["shape"], r["config"]) for r in records}


def run_sweep(runner: Runner, space: SearchSpace, workload: Workload, dims: MLADims, kv_cache_dtype: str,
              out: Path, progress: Callable[[SweepProgress], None] | None = None) -> int:
    """Measure every config of ``space`` for every shape of ``workload``; append to ``out``. Returns new lines."""
    env = runner.environment()
    out = Path(out)
    have = _existing(out, env)
    todo = [(ws.spec, ws.shape, c) for ws in workload.shapes for c in space.expand(ws.shape)
            if record_key(space.backend, dims_dict(dims), kv_cache_dtype, ws.spec, c) not in have]
    out.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    fresh = not out.exists() or out.stat().st_size == 0
    with out.open("a") as f:
        if fresh:
            header = {"kind": SWEEP_KIND, "schema_version": 1, "environment": env.as_dict(),
                      "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                      # why a backend could not run where this was recorded, for replay to say instead of
                      # "not recorded" (e.g. "needs compute capability 10.x")
                      "backends": [{"name": b.name, "kind": b.kind, "available": b.available, "reason": b.reason}
                                   for b in runner.backends()]}
            f.write(json.dumps(header, sort_keys=True) + "\n")
        for i, (spec, shape, config) in enumerate(todo):
            case = Case(space.backend, shape, dims, freeze_params(config), kv_cache_dtype)
            m = runner.measure(case)
            f.write(json.dumps(measurement_record(case, spec, m), sort_keys=True) + "\n")
            f.flush()
            written += 1
            if progress:
                progress(SweepProgress(i + 1, len(todo), spec, m.status.value, m.median_ms if m.ok else None))
    return written
