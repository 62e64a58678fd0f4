"""Tuning tables: the best confirmed settings per shape, as plain data (pure functions over summaries)."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from .. import batch_spec
from ..errors import UsageError
from ..space import format_config
from ..space_auto import AUTO
from ..stats import round_sig
from ..records import Candidate, Confirmation
from ..study.verdict import judged
from .entry import BestCandidate, Interval, TableEntry, Trials, entries
from .summary import StudySummary

# An entry of a study whose confirmation has not run: its trials are there, its verdict is not.
UNCONFIRMED_NOTE = "not confirmed yet: run the study to its end"

TABLE_KIND = "mla-tune/tuning-table"
TABLE_SCHEMA_VERSION = 1
# Version 2 adds ``backend: auto`` tables (``--backend auto`` studies), each of whose configs names its decode
# backend (a ``backend`` key). A table of one backend is the same in both, so it is still written as version 1,
# which older mla-tune reads.
AUTO_TABLE_SCHEMA_VERSION = 2
SCHEMA_VERSIONS = (TABLE_SCHEMA_VERSION, AUTO_TABLE_SCHEMA_VERSION)

def _provenance(summaries: list[StudySummary]) -> dict[str, Any]:
    envs = {repr(s.attrs.get("environment")) for s in summaries}
    if len(envs) != 1:
        raise UsageError("the studies come from different GPUs or versions; export them separately",
                         hint="pass --gpu to pick one")
    env = dict(summaries[0].attrs["environment"])
    dates = sorted(s.confirmation["date"] for s in summaries if s.confirmation)
    env["date"] = dates[-1] if dates else None
    return env


def _block_size(summaries: list[StudySummary]) -> int | None:
    for s in summaries:
        details = (s.baseline or {}).get("details") or {}
        if "block_size" in details:
            return int(details["block_size"])
    return None


def _entry(s: StudySummary) -> TableEntry:
    """What the study's confirmation says of its shape (or mix): one of the entry kinds ``entry`` describes."""
    shapes = s.attrs["shapes"]
    base = TableEntry(Trials(s.measured, s.failed, s.duplicates), tuned=False)
    if len(shapes) == 1:
        spec = shapes[0]["spec"]
        # the trials' times: what `deploy` prices a global value with on this shape
        base = replace(base, shape=spec, kind=batch_spec.classify(batch_spec.parse(spec)),
                       landscape=tuple((dict(c), ms) for c, ms in s.landscape or ()))
    else:
        base = replace(base, workload=s.attrs["workload"], shapes=tuple((x["spec"], x["weight"]) for x in shapes))
    conf = s.confirmation or {}
    defaults = conf.get("default", {}).get("configs")
    if defaults is None:
        return replace(base, note=UNCONFIRMED_NOTE)
    base = replace(base, default_params=tuple(defaults), params=tuple(defaults))
    if s.best_value is None and s.failed and (s.baseline or {}).get("status") not in (None, "ok"):
        return _failing(base, s)
    # Judged again from the stored rounds, so every table applies the current statistics to the raw data.
    confirmation = judged(Confirmation.from_attrs(conf))
    cands = _unweighted(confirmation.candidates, s)
    if confirmation.winner is None:
        return _default_kept(base, cands, s)
    c = cands[confirmation.winner]
    params, same = _as_default_where_equivalent(c.configs, defaults, s.baseline)
    if params == defaults:  # the "winner" runs the default's kernels: its gain can only be noise
        return replace(base, default_ms=c.default_ms, best_ms=c.default_ms, confirmed=Interval(1.0),
                       samples={"default": _samples(c)["default"]},
                       note=f"keeping vLLM's defaults: the confirmed config (prefill_backend {same}) runs the "
                            f"same kernels as auto here, so its x{_speedup(c):.3f} is noise")
    replayed = s.attrs.get("environment", {}).get("runner") == "replay"
    note = (f"confirmed x{_speedup(c):.3f} over vLLM's default in {confirmation.rounds} "
            + _rounds_kind(confirmation.pairing, replayed))
    if same:
        note += f"; prefill_backend {same} is what auto selects here, so the default is kept for it"
    return replace(base, tuned=True, params=tuple(params), note=note, default_ms=c.default_ms,
                   best_ms=c.best_ms, confirmed=Interval(_speedup(c), _ci(c), c.ci_level),
                   samples=_samples(c))


# A judged candidate (``verdict.judged``) has its verdict set; these read it where the type checker cannot see that.
def _speedup(c: Candidate) -> float:
    assert c.speedup is not None, c
    return c.speedup


def _ci(c: Candidate) -> tuple[float, float]:
    assert c.ci is not None, c
    return c.ci


def _samples(c: Candidate) -> dict[str, int]:
    return dict(c.samples or {})


def _failing(base: TableEntry, s: StudySummary) -> TableEntry:
    """Nothing ran, vLLM's default included: the entry says so, and why."""
    why = ((s.baseline or {}).get("message") or "every config failed").splitlines()[0]
    return replace(base, error=why[:300], note=f"fails here: all {s.failed} configs failed, vLLM's default "
                   "included; do not serve this shape with this backend")


def _default_kept(base: TableEntry, cands: tuple[Candidate, ...], s: StudySummary) -> TableEntry:
    """No candidate confirmed: vLLM's default served, the fastest candidate shown with its interval."""
    base = replace(base, note=_why_default(cands))
    ok = [c for c in cands if c.status == "ok"]
    if ok:
        c = max(ok, key=_speedup)
        kept_ci = all(math.isfinite(x) for x in _ci(c))  # a candidate kept without its rounds has no interval
        interval = Interval(_speedup(c), _ci(c), c.ci_level) if kept_ci else Interval(_speedup(c))
        return replace(base, default_ms=c.default_ms, best_ms=c.default_ms, confirmed=Interval(1.0),
                       samples={"default": _samples(c)["default"]},
                       best_candidate=BestCandidate(tuple(c.configs), c.best_ms, interval))
    if s.baseline and s.baseline.get("median_ms") is not None:
        ms = s.baseline["median_ms"]
        return replace(base, default_ms=ms, best_ms=ms, confirmed=Interval(1.0),
                       samples={"default": s.baseline.get("n_samples", 0)})
    return base


def _rounds_kind(pairing: str | None, replayed: bool) -> str:
    """How the confirmation's rounds were recorded (its ``pairing``): interleaved with the default in one recording
    (since paired recording), replayed from such pairs, or (older confirmations) separate recordings back to back."""
    if pairing is None:  # stored before paired recordings
        return ("replayed rounds (resampled from one recording per config, not paired in time)" if replayed
                else "paired rounds (separate recordings, back to back)")
    if pairing == "interleaved":
        return "rounds, each recorded against the default sample by sample"
    if pairing == "replayed pairs":
        return "replayed rounds (pairs recorded against the default sample by sample)"
    if pairing.startswith("no"):
        return ("replayed rounds composed from separate recordings (not paired in time: the interval leaves out "
                "how the clock moved between them)")
    return f"rounds ({pairing})"


def _unweighted(cands: tuple[Candidate, ...], s: StudySummary) -> tuple[Candidate, ...]:
    """Candidates' times as one shape's times: a per-shape study of schema 1 stored them multiplied by the shape's
    weight (a bug: a weight belongs to a traffic mix, never to one shape's latency)."""
    shapes = s.attrs.get("shapes") or []
    if s.attrs.get("schema_version", 1) >= 2 or len(shapes) != 1 or shapes[0].get("weight", 1) == 1:
        return cands
    w = shapes[0]["weight"]
    return tuple(replace(c, default_ms=None if c.default_ms is None else round_sig(c.default_ms / w),
                         best_ms=None if c.best_ms is None else round_sig(c.best_ms / w)) for c in cands)


def _as_default_where_equivalent(configs: list[dict], defaults: list[dict], baseline: dict[str, Any] | None
                                  ) -> tuple[list[dict], str | None]:
    """Write ``auto`` back where the winner's prefill backend is the one ``auto`` resolved to in the baseline.

    On an H100 vLLM's ``auto`` picks FA3, so ``fa3`` and ``auto`` run the same kernels; a table saying
    ``fa3`` would pin a choice serving makes anyway and that may differ on another GPU.
    """
    resolved = ((baseline or {}).get("details") or {}).get("prefill")
    out, same = [], None
    for config, default in zip(configs, defaults):
        config = dict(config)
        value = config.get("prefill_backend")
        if resolved and value == resolved and default.get("prefill_backend") == "auto" and value != "auto":
            config["prefill_backend"], same = "auto", value
        out.append(config)
    return out, same


def _why_default(cands: tuple[Candidate, ...]) -> str:
    ok = [c for c in cands if c.status == "ok"]
    if not cands:
        return "keeping vLLM's defaults: no other config completed that runs differently from them"
    if not ok:
        return "keeping vLLM's defaults: every candidate failed confirmation"
    c = max(ok, key=_speedup)
    lo, hi = _ci(c)
    if hi < 1:
        return f"keeping vLLM's defaults: every candidate is slower (best x{_speedup(c):.3f} [{lo:.3f}, {hi:.3f}])"
    which = format_config(c.configs[0]) if len(c.configs) == 1 else f"trial {c.trial}"
    return (f"keeping vLLM's defaults: best candidate ({which}) x{_speedup(c):.3f} [{lo:.3f}, {hi:.3f}] is not "
            "distinguishable from noise")


def build_table(summaries: list[StudySummary]) -> dict[str, Any]:
    """One table for one (GPU, model dims, kv dtype, backend): an entry per study, in workload order."""
    if not summaries:
        raise UsageError("no studies to export")
    first = summaries[0].attrs
    for s in summaries:
        for key in ("backend", "model", "kv_cache_dtype"):
            if s.attrs.get(key) != first.get(key):
                raise UsageError(f"studies differ in {key}: {summaries[0].name} vs {s.name}")
    return {
        "kind": TABLE_KIND,
        "schema_version": AUTO_TABLE_SCHEMA_VERSION if first["backend"] == AUTO else TABLE_SCHEMA_VERSION,
        "provenance": _provenance(summaries),
        "backend": first["backend"],
        "model": first["model"],
        "kv_cache_dtype": first["kv_cache_dtype"],
        "block_size": _block_size(summaries),
        "objective": "+".join(sorted({s.attrs["objective"] for s in summaries})),  # per-shape, mix or both
        "workloads": sorted({s.attrs["workload"] for s in summaries}),
        "entries": [_entry(s).to_dict() for s in sorted(summaries, key=_reading_order)],
    }


def _reading_order(s: StudySummary) -> tuple:
    """Workload, then batch size, tokens and context: q1s16k, 8q1s16k, ..., 256q1s16k (names sort 128 < 32)."""
    shapes = s.attrs["shapes"]
    if len(shapes) != 1:
        return (s.attrs["workload"], 1, 0, 0, 0, s.name)
    shape = batch_spec.parse(shapes[0]["spec"])
    return (s.attrs["workload"], 0, len(shape.requests), shape.num_tokens, shape.max_kv_len, s.name)


def _tuned_cell(e: TableEntry) -> str:
    if e.error is not None:
        return "FAILS"
    if e.tuned:
        return "yes"
    return "not confirmed" if e.note == UNCONFIRMED_NOTE else "no"


def table_rows(table: dict[str, Any]) -> list[list[str]]:
    """Rows for a terminal rendering of a table: shape, kind, tuned, params, default/best ms, speedup, CI."""
    rows = []
    for e in entries(table):
        ci = e.confirmed.ci if e.confirmed is not None else None
        rows.append([
            e.label, e.kind or "mix",
            _tuned_cell(e),
            format_config(dict(e.params[0])) if e.shape is not None and e.params else
            ("per shape" if e.params else "-"),
            _ms(e.default_ms), _ms(e.best_ms),
            f"x{e.confirmed.speedup:.3f}" if e.confirmed is not None else "-",
            f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "-",
        ])
    return rows


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{round_sig(x, 4):g}"
