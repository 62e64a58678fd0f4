"""Exhaustive sweeps: every distinct config of a space for every shape of a workload, each recorded against vLLM's
default with all raw samples, in rounds (the file format is ``recordings``).

The configs of one shape are measured in ``rounds`` (each round visits every config in a new seeded order), so drift
over minutes hits every config alike, and each config holds ``rounds`` recordings (``"round": 1..N``) from which
replay knows the run-to-run spread, not only one recording's. Lines are appended as they are measured, so an
interrupted sweep resumes where it stopped.
"""

from __future__ import annotations

import datetime as _dt
import json
import random
import stat
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import DataFileError, UsageError
from .recordings import SCHEMA_VERSION, SWEEP_KIND, pair_record, read_sweep, record_key
from .runners import Runner
from .space import SearchSpace
from .types import Case, Environment, MLADims, dims_dict, freeze_params
from .workloads import Workload

DEFAULT_ROUNDS = 3


@dataclass(frozen=True)
class SweepProgress:
    done: int
    total: int
    shape: str
    status: str
    median_ms: float | None
    round: int = 1
    rounds: int = 1
    speedup: float | None = None  # over vLLM's default, in the same recording


def _existing(path: Path, env: Environment) -> Counter[str]:
    """How many recordings each config already has in ``path`` (a resumed sweep takes the rest)."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return Counter()
    except OSError as e:
        raise DataFileError(str(path), "", f"cannot write a sweep there: {e.strerror}") from None
    if not stat.S_ISREG(info.st_mode):  # appending to a FIFO would block, to a directory fail
        raise DataFileError(str(path), "", "not a regular file: give a .jsonl file to write the sweep to")
    if info.st_size == 0:
        return Counter()
    header, records = read_sweep(path)
    if header["environment"].get("gpu") != env.as_dict().get("gpu"):
        raise UsageError(f"{path} was recorded on {header['environment']['gpu']['name']}, not this GPU",
                         hint="write the sweep to another file")
    if header.get("schema_version") != SCHEMA_VERSION:
        raise UsageError(f"{path} holds separate recordings (sweep schema {header.get('schema_version')}); this "
                         "sweep records pairs", hint="write the sweep to another file")
    return Counter(record_key(r["backend"], r["model"], r["kv_cache_dtype"], r["shape"], r["config"])
                   for r in records)


@dataclass(frozen=True)
class Visit:
    """One measurement a sweep still has to make: a config of a shape, in round ``round``."""

    spec: str
    shape: Any
    config: dict[str, Any]
    round: int


def plan_visits(shapes: list[tuple[str, Any, list[dict[str, Any]]]], key: Callable[[str, dict], str],
                have: Counter[str], rounds: int, seed: int = 0) -> list[Visit]:
    """Shape by shape, ``rounds`` rounds, each visiting the configs still short of ``rounds`` recordings in a
    new seeded order: a config recorded ``k`` times already is visited in rounds ``k+1..rounds`` only."""
    visits = []
    for spec, shape, configs in shapes:
        for r in range(rounds):
            order = list(configs)
            random.Random(f"{seed}/{spec}/{r}").shuffle(order)
            visits += [Visit(spec, shape, c, r + 1) for c in order if have[key(spec, c)] <= r]
    return visits


def run_sweep(runner: Runner, space: SearchSpace, workload: Workload, dims: MLADims, kv_cache_dtype: str,
              out: Path, progress: Callable[[SweepProgress], None] | None = None, rounds: int = DEFAULT_ROUNDS,
              seed: int = 0) -> int:
    """Measure every config of ``space`` for every shape of ``workload`` ``rounds`` times, interleaved (see the
    module doc); append to ``out``. Returns the number of new lines."""
    env = runner.environment()
    out = Path(out)
    have = _existing(out, env)

    def key(spec: str, config: dict) -> str:
        return record_key(space.backend, dims_dict(dims), kv_cache_dtype, spec, config)

    todo = plan_visits([(ws.spec, ws.shape, space.expand(ws.shape)) for ws in workload.shapes], key, have,
                       rounds, seed)
    written = 0
    fresh = not out.exists() or out.stat().st_size == 0
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        f = out.open("a")
    except OSError as e:
        raise DataFileError(str(out), "", f"cannot write a sweep there: {e.strerror}") from None
    with f:
        if fresh:
            header = {"kind": SWEEP_KIND, "schema_version": SCHEMA_VERSION, "environment": env.as_dict(),
                      "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                      # why a backend could not run where this was recorded, for replay to say instead of
                      # "not recorded" (e.g. "needs compute capability 10.x")
                      "backends": [{"name": b.name, "kind": b.kind, "available": b.available, "reason": b.reason}
                                   for b in runner.backends()]}
            f.write(json.dumps(header, sort_keys=True) + "\n")
        for i, v in enumerate(todo):
            case = Case(space.backend, v.shape, dims, freeze_params(v.config), kv_cache_dtype)
            ref_case = case.with_params(space.default_config(v.shape))
            pm = runner.measure_paired([ref_case, case])
            m = pm.arms[1]
            f.write(json.dumps(pair_record(ref_case, case, v.spec, pm, v.round), sort_keys=True) + "\n")
            f.flush()
            written += 1
            if progress:
                progress(SweepProgress(i + 1, len(todo), v.spec, m.status.value, m.median_ms if m.ok else None,
                                       v.round, rounds, pm.pairs[1].speedup if pm.pairs[1] else None))
    return written
