"""The replay runner: answers cases from recorded sweeps (``mla-tune sweep``), never from invention.

``--runner replay:PATH`` takes a sweep file or a directory of them (``*.jsonl``, searched recursively). A case
is answered only from the recordings of that exact backend, model dims, kv-cache dtype, shape and config: each
answer picks one of the config's recordings (a sweep's rounds) at random and draws its samples with replacement
from that recording's raw samples, so the noise a study sees is the GPU's own, run-to-run spread included.
A case the sweeps do not hold is refused as data (``not recorded``), never interpolated. The environment is the
recording's (GPU, versions, date) with ``runner: replay``, so every table made from it says so.
"""

from __future__ import annotations

import random
from dataclasses import replace
import time
from pathlib import Path
from typing import Any

from .. import env
from ..errors import DataFileError, RunnerUnavailableError
from ..study.plan import dims_dict
from ..space import BACKENDS, PREFILL_BACKENDS
from ..sweep import read_sweep, record_key
from ..types import BackendStatus, Case, Environment, Measurement, Status
from . import Runner

DELAY_ENV = env.REPLAY_DELAY_S  # seconds to sleep per measurement: lets tests catch a trial mid-flight


class ReplayRunner(Runner):
    name = "replay"

    def __init__(self, records: dict[str, list[dict[str, Any]]], environment: Environment, source: str,
                 seed: int | None = 0, unavailable: dict[tuple[str, str], str] | None = None) -> None:
        self._records = records
        self._unavailable = dict(unavailable or {})  # (kind, name) -> why it could not run when recorded
        self._env = environment
        self._source = source
        self._rng = random.Random(seed)
        self.delay_s = env.replay_delay_s()

    @classmethod
    def open(cls, arg: str | None, seed: int | None = 0) -> ReplayRunner:
        if not arg:
            raise RunnerUnavailableError("the replay runner needs recorded sweeps",
                                         hint="use --runner replay:results/sweeps/h100")
        path = Path(arg)
        files = sorted(path.rglob("*.jsonl")) if path.is_dir() else [path]
        if not path.exists() or not files:
            raise RunnerUnavailableError(f"no recorded sweeps at {path}", hint="record some with `mla-tune sweep`")
        records: dict[str, list[dict[str, Any]]] = {}
        unavailable: dict[tuple[str, str], str] = {}  # (kind, name) -> why it could not run when recorded
        env: Environment | None = None
        dates: list[str] = []
        for f in files:
            header, recs = read_sweep(f)
            file_env = _replay_env(header)
            if env is None:
                env = file_env
            elif replace(file_env, recorded=None) != replace(env, recorded=None):
                raise DataFileError(str(f), "line 1.environment", f"recorded on {file_env.gpu_name} with vLLM "
                                    f"{file_env.vllm}, torch {file_env.torch}, driver {file_env.driver}; other "
                                    "files here differ: replay one GPU and software stack at a time")
            dates.append(file_env.recorded or "")
            for b in header.get("backends") or []:  # older sweeps do not say
                if not b.get("available") and b.get("reason"):
                    unavailable.setdefault((b["kind"], b["name"]), b["reason"])
            for rec in recs:
                rec["_file"], rec["_recorded"] = str(f), file_env.recorded
                key = record_key(rec["backend"], rec["model"], rec["kv_cache_dtype"], rec["shape"], rec["config"])
                same = [r for r in records.get(key, []) if r.get("round") == rec.get("round")]
                if same:  # two files with one round of a config: a copied file, not a second recording
                    raise DataFileError(str(f), f"{rec['backend']} {rec['shape']}", "also recorded in "
                                        f"{same[0]['_file']}" + (f" (round {rec['round']})" if "round" in rec else "")
                                        + ": one recording per config and round")
                records.setdefault(key, []).append(rec)
        assert env is not None
        dates = sorted(d for d in dates if d)
        span = dates[0] if dates and dates[0] == dates[-1] else (f"{dates[0]}..{dates[-1]}" if dates else None)
        return cls(records, replace(env, recorded=span), str(path), seed, unavailable)

    def environment(self) -> Environment:
        return self._env

    def backends(self) -> tuple[BackendStatus, ...]:
        every = [r for recs in self._records.values() for r in recs]
        decode = {r["backend"] for r in every if r["status"] == "ok"}
        prefill_ok: set[str] = set()
        prefill_why: dict[str, str] = {}
        for r in every:
            value = str(r["config"].get("prefill_backend", ""))
            if r["status"] == "ok":
                prefill_ok.add(value)
            elif value and r["status"] == "unsupported":
                prefill_why.setdefault(value, r.get("message") or "")
        def not_recorded(kind: str, name: str) -> str:
            why = self._unavailable.get((kind, name))
            return f"unavailable when recorded: {why}" if why else f"not recorded in {self._source}"

        out = [BackendStatus(b, "decode", b in decode, "" if b in decode else not_recorded("decode", b))
               for b in BACKENDS]
        for p in PREFILL_BACKENDS:
            if p != "auto":
                ok = p in prefill_ok
                why = "" if ok else prefill_why.get(p, not_recorded("prefill", p))
                out.append(BackendStatus(p, "prefill", ok, f"recorded: {why}" if why and p in prefill_why else why))
        return tuple(out)

    def unanswerable(self, case: Case) -> str | None:
        if not self.recordings(case):
            from .. import batch_spec

            return (f"{case.backend} {case.dims.label} kv {case.kv_cache_dtype} {batch_spec.format(case.shape)} "
                    f"is not recorded in {self._source}")
        return None

    def recordings(self, case: Case) -> list[dict[str, Any]]:
        """Every recording of ``case`` (one per sweep round; empty when it was never recorded)."""
        from .. import batch_spec

        key = record_key(case.backend, dims_dict(case.dims), case.kv_cache_dtype, batch_spec.format(case.shape),
                         case.param_dict)
        return self._records.get(key, [])

    def lookup(self, case: Case) -> dict[str, Any] | None:
        """The recordings of ``case`` pooled into one record (None when not recorded): see ``pooled``."""
        recs = self.recordings(case)
        return pooled(recs) if recs else None

    def measure(self, case: Case) -> Measurement:
        if self.delay_s:
            time.sleep(self.delay_s)
        recs = self.recordings(case)
        rec = self._rng.choice(recs) if recs else None
        if rec is None:
            from .. import batch_spec
            from ..space import format_config

            return Measurement.failed(Status.ERROR, f"not recorded: {case.backend} {case.dims.label} "
                                      f"kv {case.kv_cache_dtype} {batch_spec.format(case.shape)} "
                                      f"{format_config(case.param_dict)} is not in {self._source}")
        details = tuple(sorted({**rec.get("details", {}), "replayed_from": Path(rec["_file"]).name,
                                "recorded": rec.get("_recorded") or ""}.items()))
        if rec["status"] != "ok":
            return Measurement(Status(rec["status"]), (), rec.get("message") or "failed when recorded",
                               None, details)
        recorded = rec["samples_ms"]
        samples = tuple(self._rng.choice(recorded) for _ in recorded)
        return Measurement(Status.OK, samples, "", rec.get("rel_err"), details)

    def truth(self) -> dict[str, dict[str, Any]]:
        """Every config's recordings pooled, by key (for benchmarks that need the recorded medians)."""
        return {key: pooled(recs) for key, recs in self._records.items()}


def pooled(recs: list[dict[str, Any]]) -> dict[str, Any]:
    """A config's recordings as one record: the samples of every ok recording together (ok if any was),
    ``recordings`` saying how many there were."""
    ok = [r for r in recs if r["status"] == "ok"]
    base = dict(ok[0] if ok else recs[0])
    if ok:
        base["samples_ms"] = [x for r in ok for x in r["samples_ms"]]
    base["recordings"] = len(recs)
    return base


def _replay_env(header: dict[str, Any]) -> Environment:
    env = Environment.from_dict(header["environment"])
    extra = dict(env.extra) | {"recorded_by": env.runner}
    return Environment(runner="replay", gpu_name=env.gpu_name, compute_capability=env.compute_capability,
                       sm_count=env.sm_count, driver=env.driver, cuda=env.cuda, torch=env.torch, vllm=env.vllm,
                       mla_tune=env.mla_tune, recorded=header.get("date") or env.recorded,
                       extra=tuple(sorted(extra.items())))
