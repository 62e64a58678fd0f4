"""Serving profiles: what mla-tune's vLLM plugin applies, for which engine, chosen how. Pure records and rules.

A profile is written by ``mla-tune deploy`` from tuning tables and read by the plugin in every vLLM process.
It holds three kinds of settings:

- ``per_batch``: a knob whose best value depends on the decode batch (FLASH_ATTN_MLA's split cap, the KV split
  count). vLLM knows a decode batch by its token count (requests x tokens per request), padded up to the CUDA
  graph size it was captured at. The value for ``n`` tokens is the one measured at the **nearest measured token
  count** (absolute distance, ties to the smaller; vLLM's fused-MoE tables choose the same way), and, on paths
  that run eagerly, at the nearest measured context (by ratio) among those points. A context more than ``CONTEXT_REACH``
  times away from every measured one gets **no** value (vLLM's heuristic runs): the best split count moves with
  the context (on an H200, TRITON_MLA's best split at 8 requests is 4 at 4k and auto at 64k, where 1 split is
  3.4x slower), so a value measured at 4k says nothing about 64k.
- ``at_build``: one value set when vLLM creates the metadata builder (the reorder threshold).
- ``global``: one value for the deployment that vLLM itself takes as a setting; ``deploy`` prints the flags
  and the plugin only checks them.

``match`` names the engine it was measured for; the plugin refuses a profile that does not match.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import _yaml, batch_spec
from ..errors import BatchSpecError, DataFileError
from ..knobs import BACKENDS, KNOBS, ServingApply, knob, knob_names
from ..paths import safe_component
from ..types import EngineMatch as Match
from ..types import ParamValue
from ..vllm_adapters import family_within
from ..vllm_adapters import padded_tokens  # noqa: F401 - where callers have always found it

PROFILE_KIND = "mla-tune/serving-profile"
MAX_POINTS = 4096
CONTEXT_REACH = 2.0  # a point measured at context c serves contexts in [c / 2, 2 c]


@dataclass(frozen=True)
class Point:
    """A measured decode batch: ``tokens`` decode tokens (at ``context`` tokens of cache, where it matters)."""

    tokens: int
    value: ParamValue
    context: int | None = None
    shape: str = ""  # the table entry it came from, for the log and for `verify`


@dataclass(frozen=True)
class PerBatchRule:
    knob: str
    points: tuple[Point, ...]  # sorted by (tokens, context)

    def select(self, tokens: int, context: int | None = None) -> Point | None:
        """The point serving ``tokens`` decode tokens: nearest measured token count, then nearest context; None
        where the context is known and beyond ``CONTEXT_REACH`` of every measured one (leave vLLM's value)."""
        counts = sorted({p.tokens for p in self.points})
        nearest = min(counts, key=lambda t: (abs(t - tokens), t))
        here = [p for p in self.points if p.tokens == nearest]
        if context is None or all(p.context is None for p in here):
            return here[0]
        # nearest by ratio (4k is as far from 2k as from 8k), ties to the smaller context
        best = min(here, key=lambda p: (abs(math.log(max(p.context or 1, 1) / max(context, 1))), p.context or 0))
        if best.context and not best.context / CONTEXT_REACH <= context <= best.context * CONTEXT_REACH:
            return None
        return best

    @property
    def uses_context(self) -> bool:
        return any(p.context is not None for p in self.points)


@dataclass(frozen=True)
class Profile:
    match: Match
    per_batch: tuple[PerBatchRule, ...] = ()
    at_build: tuple[tuple[str, ParamValue], ...] = ()
    global_: tuple[tuple[str, ParamValue], ...] = ()
    provenance: Mapping[str, Any] = field(default_factory=dict)

    def rule(self, name: str) -> PerBatchRule | None:
        return next((r for r in self.per_batch if r.knob == name), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": PROFILE_KIND, "schema_version": 1,
            "match": {k: getattr(self.match, k) for k in Match.__dataclass_fields__},
            "global": dict(self.global_), "at_build": dict(self.at_build),
            "per_batch": {r.knob: [{k: v for k, v in (("tokens", p.tokens), ("context", p.context),
                                                       ("value", p.value), ("shape", p.shape)) if v is not None}
                                   for p in r.points] for r in self.per_batch},
            "provenance": dict(self.provenance),
        }


# What the plugin reads off the engine it runs in has the same fields as what a profile was measured for.
RunningEngine = Match


def mismatch(match: Match, engine: RunningEngine) -> str | None:
    """The first way ``engine`` differs from what the profile was measured for, as one phrase, or None."""
    for name in ("backend", "gpu", "compute_capability", "num_q_heads", "kv_lora_rank", "qk_rope_head_dim",
                 "kv_cache_dtype", "vllm"):
        want, have = getattr(match, name), getattr(engine, name)
        if name == "vllm" and family_within(str(have), str(want)):
            continue
        if str(want) != str(have):
            return f"{name}: profile {want}, engine {have}"
    return None


# -- loading -----------------------------------------------------------------------------------------
MAX_TOKENS = 1 << 24  # decode tokens of one batch (4096 requests of 16 tokens are 64k)


def _int(path: Path, key: str, value: object, low: int = 1, high: int = 1 << 20) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise DataFileError(str(path), key, f"expected an integer >= {low}, got {_yaml.short(value)}")
    if value > high:
        raise DataFileError(str(path), key, f"is {_yaml.short(value)}, expected an integer in [{low}, {high}]")
    return value


def _text(path: Path, key: str, value: object, *, numbers: bool = False) -> str:
    """A short one-line string (``numbers``: a number written without quotes, ``9.0``, is taken as its text)."""
    kinds = (str, int, float) if numbers else str
    text = str(_yaml.expect(path, key, value, kinds, "a string"))
    if not text.strip() or len(text) > 64 or not text.isprintable():
        raise DataFileError(str(path), key, f"is {_yaml.short(value)}, expected a short name")
    return text


def _names(path: Path, where: str, raw: dict) -> dict:
    """A section's keys are knob names (an integer key would be neither a knob nor sortable with the others)."""
    for k in raw:
        if not isinstance(k, str):
            raise DataFileError(str(path), f"{where}.{_yaml.short(k)}", "expected a knob name")
    return raw


def _match(path: Path, raw: object) -> Match:
    m = _yaml.check_keys(path, "match", raw, Match.__dataclass_fields__)
    if m["backend"] not in BACKENDS:
        raise DataFileError(str(path), "match.backend", f"unknown backend {_yaml.short(m['backend'])}")
    gpu = _text(path, "match.gpu", m["gpu"])
    if safe_component(gpu) != gpu:  # what gpu_short_name makes of the GPU's name: it is part of file names too
        raise DataFileError(str(path), "match.gpu", f"is {_yaml.short(gpu)}, expected a GPU's short name (H100)")
    return Match(gpu, _text(path, "match.compute_capability", m["compute_capability"], numbers=True), m["backend"],
                 *(_int(path, f"match.{k}", m[k]) for k in ("num_q_heads", "kv_lora_rank", "qk_rope_head_dim")),
                 _text(path, "match.kv_cache_dtype", m["kv_cache_dtype"]),
                 _text(path, "match.vllm", m["vllm"], numbers=True))


# What deploy writes into a profile's provenance; verify reads model and tp (the dims to measure) and measured_with.
_PROVENANCE = {"tables": list, "measured_with": list, "traffic": str, "vllm_target": str, "model": str, "tp": int,
               "rule": str}


def _provenance(path: Path, raw: object) -> dict[str, Any]:
    prov = _yaml.check_keys(path, "provenance", raw or {}, (), _PROVENANCE)
    for key, value in prov.items():
        where = f"provenance.{key}"
        if _PROVENANCE[key] is int:
            _int(path, where, value, high=1024)
        elif _PROVENANCE[key] is list:
            for i, item in enumerate(_yaml.expect(path, where, value, list, "a list of strings")):
                _yaml.expect(path, f"{where}[{i}]", item, str, "a string")
        else:
            _yaml.expect(path, where, value, str, "a string")
    return prov


def _knob_value(path: Path, key: str, name: str, value: object, backend: str) -> ParamValue:
    try:
        k = knob(name)
    except Exception:  # noqa: BLE001 - an unknown knob is a data error here
        raise DataFileError(str(path), key, f"unknown knob {name!r}") from None
    if backend not in k.backends:
        raise DataFileError(str(path), key, f"{name} does not apply to {backend}")
    if not k.accepts(value):
        raise DataFileError(str(path), key, f"{name}={_yaml.short(value)}; allowed: {k.allowed()}")
    return value  # type: ignore[return-value]


def _applied_as(path: Path, where: str, name: str, serving: ServingApply, section: str) -> None:
    # The plugin applies per_batch knobs per decode batch and at_build knobs when the builder is created; a knob
    # in the other section would be logged as applied and then ignored (or applied the wrong way).
    if name in knob_names() and knob(name).serving is not serving:
        allowed = ", ".join(k.name for k in KNOBS if k.serving is serving)
        raise DataFileError(str(path), where, f"{name} cannot be set {section}; allowed there: {allowed}")


def _points(path: Path, where: str, name: str, raw: object, backend: str) -> PerBatchRule:
    _applied_as(path, where, name, ServingApply.PLUGIN_PER_BATCH, "per batch")
    items = _yaml.expect(path, where, raw, list, "a list of {tokens, value}")
    if not items or len(items) > MAX_POINTS:
        raise DataFileError(str(path), where, f"needs 1 to {MAX_POINTS} points")
    points, seen = [], set()
    for i, p in enumerate(items):
        w = f"{where}[{i}]"
        p = _yaml.check_keys(path, w, p, ["tokens", "value"], ["context", "shape"])
        point = Point(_int(path, f"{w}.tokens", p["tokens"], high=MAX_TOKENS),
                      _knob_value(path, f"{w}.value", name, p["value"], backend),
                      _int(path, f"{w}.context", p["context"], high=batch_spec.MAX_LEN)
                      if p.get("context") is not None else None,
                      _yaml.expect(path, f"{w}.shape", p.get("shape", ""), str, "batch specs joined by +"))
        _measured_at(path, w, point)
        if (point.tokens, point.context) in seen:
            raise DataFileError(str(path), w, f"a second point for tokens={point.tokens} context={point.context}")
        seen.add((point.tokens, point.context))
        points.append(point)
    return PerBatchRule(name, tuple(sorted(points, key=lambda q: (q.tokens, q.context or 0))))


def _measured_at(path: Path, where: str, point: Point) -> None:
    """A point agrees with the shapes it names: each measured batch has its decode tokens (and its context, where
    the point has one), so a value cannot be moved to another batch size by editing ``tokens``."""
    for spec in filter(None, point.shape.split("+")):
        try:
            shape = batch_spec.parse(spec)
        except BatchSpecError as e:
            raise DataFileError(str(path), f"{where}.shape", str(e)) from None
        if shape.num_tokens != point.tokens or point.context not in (None, shape.max_kv_len):
            at = f"{point.tokens} tokens" + (f" at context {point.context}" if point.context is not None else "")
            raise DataFileError(str(path), where, f"is a point for {at}, but its shape {spec} has "
                                f"{shape.num_tokens} tokens at context {shape.max_kv_len}: the profile was edited or "
                                "damaged, deploy it again")


def load_profile(path: Path) -> Profile:
    """Read and validate a profile; any problem is one ``DataFileError`` naming the file and the key."""
    path = Path(path)
    data = _yaml.check_keys(path, "", _yaml.load(path), ["kind", "schema_version", "match"],
                            ["global", "at_build", "per_batch", "provenance"])
    if data["kind"] != PROFILE_KIND:
        raise DataFileError(str(path), "kind", f"is {_yaml.short(data['kind'])}, expected {PROFILE_KIND!r}")
    match = _match(path, data["match"])
    sections = {}
    for name in ("global", "at_build"):
        raw = _names(path, name, _yaml.expect(path, name, data.get(name) or {}, dict, "a mapping of knob: value"))
        sections[name] = tuple(sorted((k, _knob_value(path, f"{name}.{k}", k, v, match.backend))
                                      for k, v in raw.items()))
        if name == "at_build":
            for k, _ in sections[name]:
                _applied_as(path, f"at_build.{k}", k, ServingApply.PLUGIN_AT_BUILD, "at build")
    raw_rules = _names(path, "per_batch", _yaml.expect(path, "per_batch", data.get("per_batch") or {}, dict,
                                                       "a mapping of knob: points"))
    rules = tuple(_points(path, f"per_batch.{k}", k, v, match.backend) for k, v in sorted(raw_rules.items()))
    prov = _provenance(path, _yaml.expect(path, "provenance", data.get("provenance") or {}, dict, "a mapping"))
    return Profile(match, rules, sections["at_build"], sections["global"], prov)
