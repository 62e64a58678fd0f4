"""The sweep file format: recordings of measurements as JSON Lines, written by ``sweep`` and read by replay.

A sweep file is JSON Lines (``.jsonl``): the first line is a header, every other line one measurement.

    {"kind": "mla-tune/sweep", "schema_version": 1, "date": "2026-11-24T23:00:00Z", "environment": {...},
     "backends": [{"name": "fa4", "kind": "prefill", "available": false, "reason": "..."}, ...]}
    {"backend": "FLASH_ATTN_MLA", "model": {...dims...}, "kv_cache_dtype": "auto", "shape": "64q1s4k",
     "config": {"cuda_graphs": true, ...}, "status": "ok", "samples_ms": [...], "rel_err": 0.0012,
     "details": {"block_size": "64", ...}, "message": ""}

``config`` is the full resolved config (see ``space.resolve``); ``model`` the MLA dims one GPU runs. Lines are
appended as they are measured, so an interrupted sweep resumes where it stopped. The replay runner reads these.

A sweep is interleaved and repeated: the configs of one shape are measured in ``rounds`` (each round visits
every config in a new seeded order), so drift over minutes hits every config alike, and each config holds
``rounds`` recordings (``"round": 1..N``; older sweeps have one and no ``round``) from which replay knows the
run-to-run spread, not only one recording's.

Since schema version 2 every line is a **pair**: the config recorded sample by sample against vLLM's default in one
recording (``Runner.measure_paired``), as every study trial is. Such a line adds the default's arm
(``"reference": {"backend", "config", "status", "samples_ms", ...}``), the arm of each sample in time order
(``"order": "0110 1001 ..."`` without the spaces: 0 the reference, 1 the config) and the recording's details
(``"recording": {"blocks", "gpu_s", "clock_event_share", ...}``); vLLM's default is recorded against itself, built
twice. Replay plays the pairs back block by block, so a replayed study's confidence is what the GPU gave.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import _yaml
from .errors import DataFileError
from .knobs import knobs_for
from .space import config_key
from .stats import round_sig
from .types import Case, Measurement, PairedMeasurement, Status, dims_dict

SWEEP_KIND = "mla-tune/sweep"
SCHEMA_VERSION = 2  # 2: every line a pair (config against vLLM's default in one recording); 1: separate recordings
SCHEMA_VERSIONS = (1, 2)
MAX_ROUNDS = 100  # rounds a sweep records per config (`mla-tune sweep --rounds`)


def record_key(backend: str, dims: dict[str, Any], kv_cache_dtype: str, shape: str, config: dict) -> str:
    """Identity of one measurement in a sweep. A knob the config does not name ran at vLLM's default (a recording
    made before the knob was declared), so old recordings still answer configs that spell that default out."""
    full = {**{k.name: k.default(backend) for k in knobs_for(backend)}, **config}
    return json.dumps([backend, dims, kv_cache_dtype, shape, dict(config_key(full))], sort_keys=True)


def measurement_record(case: Case, spec: str, m: Measurement, round_: int | None = None) -> dict[str, Any]:
    extra = {} if round_ is None else {"round": round_}
    return {**extra,
        "backend": case.backend, "model": dims_dict(case.dims), "kv_cache_dtype": case.kv_cache_dtype,
        "shape": spec, "config": case.param_dict, "status": m.status.value,
        "samples_ms": [round_sig(x) for x in m.samples_ms], "message": m.message,
        # NaN is not JSON, and a reader refuses it: an error that is not a number is no error figure
        "rel_err": None if m.rel_err is None or not math.isfinite(m.rel_err) else round_sig(m.rel_err, 3),
        "details": dict(m.details),
    }


def pair_record(ref_case: Case, case: Case, spec: str, pm: PairedMeasurement, round_: int | None = None
                ) -> dict[str, Any]:
    """The line of one paired recording (config ``case`` against vLLM's default ``ref_case``): the config's arm as
    ``measurement_record`` writes it, plus the reference arm, the sample order and the recording's details."""
    rec = measurement_record(case, spec, pm.arms[1], round_)
    ref = measurement_record(ref_case, spec, pm.arms[0])
    rec["reference"] = {k: ref[k] for k in ("backend", "config", "status", "samples_ms", "message", "rel_err",
                                            "details")}
    if pm.order:
        rec["order"] = "".join(str(a) for a in pm.order)
    rec["recording"] = dict(pm.details)
    return rec


def read_sweep(path: Path) -> tuple[dict[str, Any], Iterator[dict[str, Any]]]:
    """The header and the records of a sweep file, each checked; a bad line names the file and line number.

    Only a regular file of at most ``MAX_BYTES`` is read (a directory, FIFO or device is one line), as UTF-8.
    """
    path = Path(path)
    lines = _yaml.decode_text(str(path), _yaml.read_bytes(path, MAX_BYTES, "a sweep file (.jsonl)"),
                              "JSON Lines").splitlines()
    if not lines:
        raise DataFileError(str(path), "line 1", "empty sweep file")
    header = _parse(path, 1, lines[0])
    if header.get("kind") != SWEEP_KIND or header.get("schema_version") not in SCHEMA_VERSIONS:
        raise DataFileError(str(path), "line 1", f"not an mla-tune sweep (kind {SWEEP_KIND}, schema_version "
                            f"{' or '.join(map(str, SCHEMA_VERSIONS))})")
    _check_environment(path, header.get("environment"))
    _check_backends(path, header.get("backends"))

    def records() -> Iterator[dict[str, Any]]:
        for i, line in enumerate(lines[1:], start=2):
            if line.strip():
                yield _check_record(path, f"line {i}", _parse(path, i, line))

    return header, records()


MAX_BYTES = 256 * 1024 * 1024  # a recorded GPU's sweeps are ~0.5 MB per file


def _check_environment(path: Path, env: Any) -> None:
    """Where the sweep was recorded: what replay reports, names studies after and compares files by, typed."""
    where = "line 1.environment"
    env = _yaml.check_keys(path, where, env, ("runner", "gpu"), ("driver", "cuda", "torch", "vllm", "mla_tune",
                                                                 "recorded", "extra"))
    gpu = _yaml.check_keys(path, f"{where}.gpu", env["gpu"], ("name", "compute_capability", "sm_count"))
    for key, value in (("runner", env["runner"]), ("gpu.name", gpu["name"])):
        if not _yaml.expect(path, f"{where}.{key}", value, str, "a string").strip() or len(value) > 200:
            raise DataFileError(str(path), f"{where}.{key}", f"is {_yaml.short(value)}, expected a name")
    _yaml.expect(path, f"{where}.gpu.compute_capability", gpu["compute_capability"], (str, int, float), "a string")
    _yaml.integer(path, f"{where}.gpu.sm_count", gpu["sm_count"], high=1 << 16)
    for key in ("driver", "cuda", "torch", "vllm", "mla_tune", "recorded"):
        if env.get(key) is not None:
            _yaml.expect(path, f"{where}.{key}", env[key], str, "a string")
    for key, value in _yaml.expect(path, f"{where}.extra", env.get("extra") or {}, dict, "a mapping").items():
        _yaml.expect(path, f"{where}.extra.{key}", value, (str, int, float, bool), "a string or number")


def _check_backends(path: Path, backends: Any) -> None:
    """The header's ``backends`` (older sweeps have none): why each could not run where this was recorded."""
    for i, b in enumerate(_yaml.expect(path, "line 1.backends", backends or [], list, "a list")):
        where = f"line 1.backends[{i}]"
        b = _yaml.check_keys(path, where, b, ("name", "kind", "available"), ("reason",))
        for key in ("name", "kind", "reason"):
            _yaml.expect(path, f"{where}.{key}", b.get(key, ""), str, "a string")
        _yaml.expect(path, f"{where}.available", b["available"], bool, "true or false")


_STATUSES = tuple(s.value for s in Status)


def _check_record(path: Path, where: str, rec: dict[str, Any]) -> dict[str, Any]:
    """One measurement line: the keys replay reads, typed; samples finite and positive."""
    for key in ("backend", "model", "kv_cache_dtype", "shape", "config", "status", "samples_ms"):
        if key not in rec:
            raise DataFileError(str(path), f"{where}.{key}", "missing")
    for key in ("backend", "kv_cache_dtype", "shape"):
        _yaml.expect(path, f"{where}.{key}", rec[key], str, "a string")
    for key in ("model", "config"):
        _yaml.expect(path, f"{where}.{key}", rec[key], dict, "a mapping")
    _yaml.expect(path, f"{where}.details", rec.get("details", {}), dict, "a mapping")
    _yaml.expect(path, f"{where}.message", rec.get("message", ""), (str, type(None)), "a string")
    if rec["status"] not in _STATUSES:
        raise DataFileError(str(path), f"{where}.status", f"is {_yaml.short(rec['status'])}; known: "
                            f"{', '.join(_STATUSES)}")
    samples = _yaml.expect(path, f"{where}.samples_ms", rec["samples_ms"], list, "a list of milliseconds")
    if rec["status"] == "ok" and not samples:
        raise DataFileError(str(path), f"{where}.samples_ms", "empty, but the status is ok")
    for j, x in enumerate(samples):
        _yaml.number(path, f"{where}.samples_ms[{j}]", x, high=_yaml.MAX_MS)
    if rec.get("rel_err") is not None:
        _yaml.number(path, f"{where}.rel_err", rec["rel_err"], low_open=False, high=_yaml.MAX_RATIO)
    if "round" in rec and (type(rec["round"]) is not int or not 1 <= rec["round"] <= MAX_ROUNDS):
        raise DataFileError(str(path), f"{where}.round", f"is {_yaml.short(rec['round'])}; expected 1, 2, ... "
                            f"{MAX_ROUNDS}")
    if "reference" in rec:
        _check_pair(path, where, rec)
    return rec


def _check_pair(path: Path, where: str, rec: dict[str, Any]) -> None:
    """A pair's reference arm is a record of its own; its order string holds each arm's samples, in whole blocks."""
    ref = _yaml.expect(path, f"{where}.reference", rec["reference"], dict, "a mapping")
    _check_record(path, f"{where}.reference", {"model": rec["model"], "kv_cache_dtype": rec["kv_cache_dtype"],
                                               "shape": rec["shape"], **ref})
    _yaml.expect(path, f"{where}.recording", rec.get("recording", {}), dict, "a mapping")
    if "order" not in rec:
        return
    order = _yaml.expect(path, f"{where}.order", rec["order"], str, "a string of 0s and 1s")
    counts = (order.count("0"), order.count("1"))
    if set(order) - {"0", "1"} or len(order) % 4 or counts != (len(ref["samples_ms"]), len(rec["samples_ms"])):
        raise DataFileError(str(path), f"{where}.order", f"does not match the samples: {counts[0]} reference and "
                            f"{counts[1]} config samples in blocks of 4 expected, {len(ref['samples_ms'])} and "
                            f"{len(rec['samples_ms'])} recorded")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number a measurement can have")


def _parse(path: Path, lineno: int, line: str) -> dict[str, Any]:
    try:
        data = json.loads(line, parse_constant=_refuse_constant)
    except json.JSONDecodeError as e:
        # A line cut by a killed writer is the one error a resumable file must tolerate: say so.
        raise DataFileError(str(path), f"line {lineno}", f"not JSON ({e.msg})") from e
    except (ValueError, RecursionError) as e:  # NaN/Infinity, nesting deeper than Python's stack
        raise DataFileError(str(path), f"line {lineno}", f"not a sweep record ({' '.join(str(e).split())[:120]})"
                            ) from None
    if not isinstance(data, dict):
        raise DataFileError(str(path), f"line {lineno}", "expected a JSON object")
    return data


__all__ = ["MAX_ROUNDS", "SCHEMA_VERSION", "SCHEMA_VERSIONS", "SWEEP_KIND", "measurement_record", "pair_record", "read_sweep",
           "record_key"]
