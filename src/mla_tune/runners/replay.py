"""The replay runner: answers cases from recorded sweeps (``mla-tune sweep``), never from invention.

``--runner replay:PATH`` takes a sweep file or a directory of them (``*.jsonl``, searched recursively). A case
is answered only from the recordings of that exact backend, model dims, kv-cache dtype, shape and config: each
answer picks one of the config's recordings (a sweep's rounds) at random and draws its samples with replacement
from that recording's raw samples, so the noise a study sees is the GPU's own, run-to-run spread included.
A case the sweeps do not hold is refused as data (``not recorded``), never interpolated. The environment is the
recording's (GPU, versions, date) with ``runner: replay``, so every table made from it says so.

Paired measurements (``measure_paired``) are played back from the sweeps' pairs: each arm from one of the recordings
of that config against vLLM's default (a round at random), its blocks drawn with replacement and kept whole, so the
replayed ratio has the precision the GPU's pairing gave. An arm with no such pair (a sweep recorded before pairing,
a config of another backend than the default's) is composed from separate recordings and says so
(``paired: no``), with the run-to-run spread that implies.
"""

from __future__ import annotations

import random
from dataclasses import replace
import time
from pathlib import Path
from typing import Any

from .. import env
from ..errors import DataFileError, RunnerUnavailableError
from ..space import BACKENDS, PREFILL_BACKENDS
from ..recordings import read_sweep, record_key
from ..types import BackendStatus, Case, Environment, Measurement, PairedMeasurement, PairStat, Status, dims_dict
from . import Runner, check_same_shape
from ._interleave import pair_stats, resampled

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
                if rec.get("reference") is not None:
                    ref = rec["reference"]
                    rec["_ref_key"] = record_key(ref["backend"], rec["model"], rec["kv_cache_dtype"], rec["shape"],
                                                 ref["config"])
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
        return self._records.get(self._key(case), [])

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

    def measure_paired(self, cases: Any) -> PairedMeasurement:
        check_same_shape(cases)
        if self.delay_s:
            time.sleep(self.delay_s)
        ref_key = self._key(cases[0])
        played: list[tuple[Measurement, Measurement, PairStat | None] | None] = [None]
        for case in cases[1:]:
            recs = [r for r in self.recordings(case) if r.get("_ref_key") == ref_key and r.get("order")]
            played.append(self._play_pair(self._rng.choice(recs)) if recs else None)
        first = next((p for p in played if p is not None), None)
        ref = first[0] if first is not None else self.measure(cases[0])
        if not ref.ok:
            other = Measurement.failed(ref.status, f"vLLM's default config failed, nothing to compare with: "
                                       f"{ref.message}")
            return PairedMeasurement((ref,) + (other,) * (len(cases) - 1), (None,) * len(cases))
        arms, pairs, composed = [ref], [PairStat(ref.median_ms, 1.0, (1.0, 1.0), first[2].blocks if first and first[2]
                                                 else 0)], 0
        for case, p in zip(cases[1:], played[1:]):
            if p is None:  # no recorded pair against this default: separate recordings
                m = self.measure(case)
                arms.append(m)
                pairs.append(PairStat(ref.median_ms, ref.median_ms / m.median_ms) if m.ok else None)
                composed += 1
            else:
                arms.append(p[1])
                pairs.append(p[2] if p[1].ok else None)
        how = "replayed pairs" if not composed else f"no: {composed} arm(s) composed from separate recordings"
        gpu = sum(sum(m.samples_ms) for m in arms if m.ok) / 1e3
        return PairedMeasurement(tuple(arms), tuple(pairs), (), (("gpu_s", f"{gpu:.4g}"), ("paired", how)))

    def _play_pair(self, rec: dict[str, Any]) -> tuple[Measurement, Measurement, PairStat | None]:
        """(reference, config, pair) of one recorded pair, its blocks resampled."""
        details = {**rec.get("details", {}), "replayed_from": Path(rec["_file"]).name,
                   "recorded": rec.get("_recorded") or ""}
        ref_rec = rec["reference"]
        if ref_rec["status"] != "ok":
            return (Measurement(Status(ref_rec["status"]), (), ref_rec.get("message") or "failed when recorded"),
                    Measurement.failed(Status(ref_rec["status"]), "the default failed when recorded"), None)
        if rec["status"] != "ok":
            m = Measurement(Status(rec["status"]), (), rec.get("message") or "failed when recorded", None,
                            tuple(sorted(details.items())))
            return Measurement(Status.OK, tuple(ref_rec["samples_ms"])), m, None
        order = tuple(int(c) for c in rec["order"])
        samples, new_order = resampled((tuple(ref_rec["samples_ms"]), tuple(rec["samples_ms"])), order, self._rng)
        stats = pair_stats(samples, new_order)
        ref_m = Measurement(Status.OK, samples[0], "", ref_rec.get("rel_err"),
                            tuple(sorted(ref_rec.get("details", {}).items())))
        arm_m = Measurement(Status.OK, samples[1], "", rec.get("rel_err"), tuple(sorted(details.items())))
        return ref_m, arm_m, stats[1]

    def _key(self, case: Case) -> str:
        from .. import batch_spec

        return record_key(case.backend, dims_dict(case.dims), case.kv_cache_dtype, batch_spec.format(case.shape),
                          case.param_dict)

    def records(self) -> dict[str, list[dict[str, Any]]]:
        """Every recording by config key (one per sweep round), as read (for benchmarks)."""
        return {key: list(recs) for key, recs in self._records.items()}

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
