"""``deploy``: tuning tables + traffic -> a serving profile, and what each global choice costs. Pure.

A knob that must hold one value for the whole deployment gets the value with the best traffic-weighted latency
over the measured shapes that carry traffic, priced from each entry's measured configs (``landscape``); a value
not measured on a shape that carries traffic is not chosen, and neither is one that runs no shape of the traffic
differently from vLLM's default (the reorder threshold changes nothing on a batch whose query lengths all lie on
one side of both values): its gain would not be measured where it is deployed. Per-batch knobs are decided after
those, under them: each measured decode batch's tuned value (or vLLM's default) is re-priced with the chosen global
values in its config, as the deployment will run it, and a tuned value that was not measured that way, or loses to
the default that way, is not applied (a split cap tuned with FA3 prefill says nothing once FA2 prefill is chosen
globally). Shapes that fail on every config are left out; traffic shapes no table measured are reported and get
vLLM's defaults.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .. import batch_spec
from ..errors import UsageError
from ..knobs import ServingApply, Situation, knob, knobs_for
from ..space import SearchSpace
from ..tables.entry import entries
from ..space_auto import AUTO, BACKEND
from ..traffic import Traffic, uniform_traffic
from ..types import ParamValue, Shape, gpu_short_name
from ..vllm_adapters import Adapter, adapter_for, parse_version
from .profile import Match, PerBatchRule, Point, Profile
from .settings import ServingSettings, serving_settings


@dataclass(frozen=True)
class Source:
    """One measured shape of a table, as deploy reads it."""

    spec: str
    shape: Shape
    chosen: Mapping[str, ParamValue]  # tuned params, or vLLM's defaults where not tuned
    default: Mapping[str, ParamValue]
    tuned: bool
    speedup: float
    latencies: tuple[tuple[tuple[tuple[str, Any], ...], float], ...]  # (config key, ms): every measured config

    def latency(self, config: Mapping[str, ParamValue]) -> float | None:
        return dict(self.latencies).get(tuple(sorted(config.items())))

    def changed(self, values: Mapping[str, ParamValue], space: SearchSpace) -> dict[str, ParamValue]:
        """This shape's chosen config with ``values`` set, re-resolved the way the runner ran it (a knob that stops
        mattering takes its idle value, as in the recorded configs)."""
        wanted = {**self.chosen, **values}
        return space.resolve(self.shape, lambda p: wanted.get(p.name, p.default))

    def under(self, globals_: Mapping[str, ParamValue], space: SearchSpace) -> Source:
        """This shape as the deployment runs it: the global choices in its config."""
        chosen = self.changed({k: v for k, v in globals_.items() if k in self.chosen}, space)
        return Source(self.spec, self.shape, chosen, self.default, self.tuned and chosen != self.default,
                      self.speedup, self.latencies)

    def priced(self, name: str, value: ParamValue, space: SearchSpace) -> float | None:
        """The measured latency of this shape's chosen config with ``name`` set to ``value``."""
        return self.latency(self.changed({name: value}, space))


@dataclass(frozen=True)
class GlobalChoice:
    knob: str
    value: ParamValue
    default: ParamValue
    # (shape, weight, ms with this value, ms with the shape's own best) for every shape this value runs differently
    # from vLLM's default
    costs: tuple[tuple[str, float, float | None, float | None], ...]
    rejected: tuple[tuple[ParamValue, str], ...]  # other candidate values and why they lost


@dataclass(frozen=True)
class PointCost:
    """What a per-batch point's value costs a measured shape it serves whose own best value is another: the point
    at ``tokens`` decode tokens serves every context measured at that batch (under CUDA graphs)."""

    knob: str
    tokens: int
    value: ParamValue
    shape: str
    weight: float
    ms: float | None  # the shape's latency with the point's value (None: not measured)
    own: float | None  # with its own best value


@dataclass(frozen=True)
class Pooled:
    """A per-batch point that took its neighbours' tuned value: not confirmed at its own batch size, but its own
    measurements price that value faster than vLLM's default there, the way the neighbouring batch sizes went."""

    knob: str
    tokens: int
    value: ParamValue
    shapes: str
    own_ratio: float  # the point's traffic-weighted latency with vLLM's default over with ``value`` (>1: faster)
    after: int  # the decode token count of the tuned neighbour it follows


@dataclass(frozen=True)
class Deployment:
    profile: Profile
    settings: ServingSettings  # the vLLM flags for the global choices
    globals_: tuple[GlobalChoice, ...]
    unmeasured: tuple[str, ...]  # traffic shapes no table measured (vLLM's defaults serve them)
    skipped: tuple[str, ...]  # table shapes left out, with why
    cautions: tuple[str, ...] = ()  # known faults of the target vLLM that this deployment must stay clear of
    point_costs: tuple[PointCost, ...] = ()  # per-batch values on the shapes whose own best value differs
    pooled: tuple[Pooled, ...] = ()  # per-batch points that follow their neighbours' tuned value


def served_space(adapter: Adapter, backend: str, kv_cache_dtype: str, sources: Sequence[Source]) -> SearchSpace:
    """The space serving prices a table's values in: the target vLLM's (whether it graphs a batch decides how many
    values a batch size can take), with the knobs the table measured only. A TRITON_MLA table measured on 0.20, where
    it never runs in a graph, names no cuda_graphs: deployed on 0.26 the graphs stay vLLM's default."""
    measured = {name for s in sources for name in s.default}
    return adapter.search_space(backend, kv_cache_dtype).only(measured)


def _sources(table: Mapping[str, Any]) -> tuple[list[Source], list[str]]:
    out, skipped = [], []
    for e in entries(table):
        if e.shape is None:
            skipped.append(f"{e.label} (a mix entry: tune per shape to deploy per batch)")
            continue
        if e.error is not None or not e.confirmed_yet:
            skipped.append(f"{e.shape} ({'fails on every config' if e.error is not None else 'not confirmed'})")
            continue
        default = dict(e.default_params[0])
        chosen = dict(e.params[0]) if e.tuned else default
        lat = {tuple(sorted(c.items())): ms for c, ms in e.landscape}
        # The confirmed medians are the better numbers for the two configs the table vouches for.
        if e.default_ms is not None:
            lat[tuple(sorted(default.items()))] = float(e.default_ms)
        if e.best_ms is not None:
            lat[tuple(sorted(chosen.items()))] = float(e.best_ms)
        speedup = e.confirmed.speedup if e.confirmed is not None else 1.0
        out.append(Source(e.shape, batch_spec.parse(e.shape), chosen, default, e.tuned, speedup, tuple(lat.items())))
    return out, skipped


# What a table's engine is, in the order ``_match`` reads it: tables differing in any of these are not one engine.
_ENGINE_FIELDS = ("backend", "GPU", "compute capability", "query heads per GPU", "kv_lora_rank", "qk_rope_head_dim",
                  "KV cache dtype")


def _match(tables: Sequence[Mapping[str, Any]], adapter: Adapter) -> Match:
    for t in tables:
        if t["provenance"].get("runner") != "vllm":
            raise UsageError(f"a table from runner {t['provenance'].get('runner')!r} is not a measurement of this "
                             "GPU: deploy tables measured with --runner vllm")
    keys = []
    for t in tables:
        prov, model = t["provenance"], t["model"]
        keys.append((t["backend"], prov["gpu"]["name"], str(prov["gpu"]["compute_capability"]),
                     model["num_q_heads"], model.get("kv_lora_rank", 512), model.get("qk_rope_head_dim", 64),
                     t["kv_cache_dtype"]))
    other = next((i for i, k in enumerate(keys) if k != keys[0]), None)
    if other is not None:
        differ = ", ".join(f"{name} {a} vs {b}" for name, a, b in zip(_ENGINE_FIELDS, keys[0], keys[other]) if a != b)
        raise UsageError(f"the tables differ in {differ} (table 1 vs table {other + 1}): a profile is for one "
                         "engine; deploy the tables of one backend, GPU, model and KV dtype together")
    backend, gpu, cc, heads, rank, rope, kv = keys[0]
    return Match(gpu_short_name(gpu), cc, backend, int(heads), int(rank), int(rope), str(kv), adapter.family)


def _is_decode(s: Source) -> bool:
    return bool(s.shape.requests) and all(r.context_len > 0 for r in s.shape.requests) and \
        len({r.q_len for r in s.shape.requests}) == 1 and not s.shape.prefill_requests(_threshold(s))


def _threshold(s: Source) -> int:
    return int(s.chosen.get("reorder_batch_threshold", 1))


def _rule(name: str, sources: list[Source], traffic: Traffic, adapter: Adapter, space: SearchSpace
          ) -> tuple[PerBatchRule | None, list[PointCost], list[Pooled]]:
    backend = space.backend
    k = knob(name)
    graphs = adapter.backends[backend].cuda_graph_support
    eager_path = graphs == "never"  # then the split count can follow the context too (no graph bakes it)
    groups: dict[tuple[int, int | None], list[Source]] = {}
    for s in sources:
        if not _is_decode(s) or not _matters(name, s, space):
            continue
        groups.setdefault((s.shape.num_tokens, s.shape.max_kv_len if eager_path else None), []).append(s)
    ordered = sorted(groups.items(), key=lambda g: (g[0][0], g[0][1] or 0))
    values = [_best_value(name, group, traffic, [s.chosen[name] for s in group], space)[0] for _, group in ordered]
    values, pooled = _follow_neighbours(name, [g for _, g in ordered], values, traffic, space, k.default(backend))
    points, costs = [], []
    for ((tokens, context), group), value in zip(ordered, values):
        points.append(Point(tokens, value, context, "+".join(s.spec for s in group)))
        costs += [PointCost(name, tokens, value, s.spec, traffic.weight(s.spec), s.priced(name, value, space),
                            s.latency(s.chosen)) for s in group if s.changed({name: value}, space) != s.chosen]
    if not points or all(p.value == k.default(backend) for p in points):
        return None, [], []
    return PerBatchRule(name, tuple(points)), costs, pooled


def _follow_neighbours(name: str, groups: list[list[Source]], values: list[ParamValue], traffic: Traffic,
                       space: SearchSpace, default: ParamValue) -> tuple[list[ParamValue], list[Pooled]]:
    """Pool the evidence across neighbouring decode-token counts (the paired issue's profile rule).

    A confirmed value usually holds over a range of batch sizes: cap 1 at 64, 128 and 256 requests, say. A point
    that kept vLLM's default only because its own confirmation fell short takes the value of a neighbouring point
    that confirmed it, where its own measurements price that value faster than the default there (the trend, and
    its own evidence not against it); it is then a neighbour for the next point. A profile that goes against its
    neighbours (cap 1 at 64, the default at 128 and 256) is kept only where the points' own measurements say so.
    Returns the values and the points that were pooled."""
    values = list(values)
    pooled: list[Pooled] = []
    for order in (range(len(values)), range(len(values) - 1, -1, -1)):  # upwards, then downwards
        prev: int | None = None
        for i in order:
            if values[i] != default:
                prev = i
                continue
            if prev is None:
                continue
            v = values[prev]
            ratio = _ratio(name, groups[i], traffic, space, default, v)
            if ratio is not None and ratio > 1.0:
                values[i] = v
                tokens = groups[i][0].shape.num_tokens
                pooled.append(Pooled(name, tokens, v, "+".join(s.spec for s in groups[i]), ratio,
                                     groups[prev][0].shape.num_tokens))
                prev = i
            else:
                prev = None
    return values, pooled


def _ratio(name: str, group: list[Source], traffic: Traffic, space: SearchSpace, default: ParamValue,
           value: ParamValue) -> float | None:
    """The group's traffic-weighted latency with vLLM's default over with ``value`` (None: not measured both ways)."""
    weights = {s.spec: traffic.weight(s.spec) or 1.0 for s in group}
    with_default = [s.priced(name, default, space) for s in group]
    with_value = [s.priced(name, value, space) for s in group]
    if any(x is None for x in with_default + with_value):
        return None
    a = sum(weights[s.spec] * x for s, x in zip(group, with_default))  # type: ignore[operator]
    b = sum(weights[s.spec] * x for s, x in zip(group, with_value))  # type: ignore[operator]
    return a / b if b else None


def _best_value(name: str, group: list[Source], traffic: Traffic, candidates: list[ParamValue], space: SearchSpace
                ) -> tuple[ParamValue, list[tuple[ParamValue, str]]]:
    """The candidate with the least traffic-weighted latency over ``group``; ties and unknowns favour the default."""
    weights = {s.spec: traffic.weight(s.spec) for s in group}
    if not any(weights.values()):
        weights = {s.spec: 1.0 for s in group}  # none of them in the traffic: weigh them alike
    default = group[0].default[name]
    scored, rejected = [], []
    for v in dict.fromkeys([default, *candidates]):
        missing = [s.spec for s in group if weights[s.spec] and s.priced(name, v, space) is None]
        if missing:
            rejected.append((v, f"not measured on {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}"))
            continue
        total = sum(weights[s.spec] * (s.priced(name, v, space) or 0.0) for s in group)
        scored.append((total, v != default, v))
    if not scored:
        return default, rejected
    scored.sort(key=lambda x: (x[0], x[1]))
    best = scored[0]
    rejected += [(v, f"weighted {t / best[0]:.3f}x the chosen value's latency") for t, _, v in scored[1:]]
    return best[2], rejected


def _matters(name: str, s: Source, space: SearchSpace) -> bool:
    """Does ``name`` change what runs on this shape (given the rest of its config)? Else it is not priced there."""
    return name in s.chosen and knob(name).matters(Situation(s.shape, s.chosen, space))


def _global(name: str, sources: list[Source], traffic: Traffic, space: SearchSpace) -> GlobalChoice:
    """One value for the deployment: priced on the shapes that carry traffic, among the values that run one of
    them differently from vLLM's default; vLLM's default where no other value does."""
    relevant = [s for s in sources if _matters(name, s, space)]
    default = relevant[0].default[name]
    candidates, idle, changed = [], [], set()
    for v in dict.fromkeys(s.chosen[name] for s in relevant):
        if v == default:
            continue
        touched = [s.spec for s in relevant if _runs_differently(s, name, v, default, space)]
        if any(traffic.weight(spec) for spec in touched):
            candidates.append(v)
            changed.update(touched)
        else:
            idle.append((v, _runs_no_traffic_differently(touched)))
    # Priced where some candidate runs differently: elsewhere every value costs the same.
    carried = [s for s in relevant if traffic.weight(s.spec) and s.spec in changed]
    value, rejected = _best_value(name, carried, traffic, candidates, space) if candidates else (default, [])
    costs = tuple((s.spec, traffic.weight(s.spec), s.priced(name, value, space), s.latency(s.chosen))
                  for s in relevant if _runs_differently(s, name, value, default, space))
    return GlobalChoice(name, value, default, costs, tuple(idle + rejected))


def _runs_differently(s: Source, name: str, value: ParamValue, default: ParamValue, space: SearchSpace) -> bool:
    """Does ``value`` run this shape differently from vLLM's default (thresholds that split it alike do not)?"""
    return s.changed({name: value}, space) != s.changed({name: default}, space)


def _runs_no_traffic_differently(touched: list[str]) -> str:
    if not touched:
        return "runs no measured shape differently from vLLM's default"
    more = f" and {len(touched) - 3} more" if len(touched) > 3 else ""
    return (f"runs no shape of the traffic differently from vLLM's default (only {', '.join(touched[:3])}{more}, "
            f"which carr{'y' if len(touched) > 1 else 'ies'} no traffic)")


def deploy(tables: Sequence[Mapping[str, Any]], traffic: Traffic | None = None, vllm: str | None = None
           ) -> Deployment:
    """A profile for the engine the tables were measured on, for ``vllm`` (default: the tables' version)."""
    if not tables:
        raise UsageError("deploy needs at least one table")
    for t in tables:
        if t["backend"] == AUTO:
            raise UsageError(_auto_refusal(t))
    adapter = adapter_for(vllm or str(tables[0]["provenance"].get("vllm", "")))
    match = _match(tables, adapter)
    sources, skipped = [], []
    for t in tables:
        got, left = _sources(t)
        sources += got
        skipped += left
    if not sources:
        raise UsageError("no measured shape to deploy in the tables (" + "; ".join(skipped) + ")")
    measured = {s.spec for s in sources}
    traffic = traffic or uniform_traffic([s.spec for s in sources], "every table shape, weighted alike")
    unmeasured = tuple(spec for spec in traffic.specs if spec not in measured)
    rules, at_build, globals_ = [], [], []
    space = served_space(adapter, match.backend, match.kv_cache_dtype, sources)
    for k in knobs_for(match.backend):
        if k.per_batch or not any(_matters(k.name, s, space) for s in sources):
            continue  # per batch: below; no measured shape where it changes anything: vLLM's default stays
        choice = _global(k.name, sources, traffic, space)
        globals_.append(choice)
        if k.serving is ServingApply.PLUGIN_AT_BUILD and choice.value != choice.default:
            at_build.append((k.name, choice.value))
    served = [s.under({c.knob: c.value for c in globals_}, space) for s in sources]
    point_costs: list[PointCost] = []
    pooled: list[Pooled] = []
    for k in knobs_for(match.backend):
        if k.per_batch:
            rule, costs, pool = _rule(k.name, served, traffic, adapter, space)
            if rule:
                rules.append(rule)
                point_costs += costs
                pooled += pool
    global_values = {c.knob: c.value for c in globals_ if knob(c.knob).serving is not ServingApply.PLUGIN_AT_BUILD}
    settings = serving_settings(match.backend, global_values, {c.knob: c.default for c in globals_}, adapter)
    prov = {"tables": [_table_label(t) for t in tables], "traffic": traffic.source, "vllm_target": adapter.family,
            "model": tables[0]["model"]["model"], "tp": tables[0]["model"]["tp"],
            "measured_with": sorted({f"{t['provenance'].get('vllm')} on {t['provenance']['gpu']['name']}"
                                     for t in tables}), "rule": "nearest measured decode token count"}
    profile = Profile(match, tuple(rules), tuple(at_build), tuple(sorted(global_values.items())), prov)
    return Deployment(profile, settings, tuple(globals_), unmeasured, tuple(skipped),
                      cautions_for(match.backend, adapter, vllm or str(tables[0]["provenance"].get("vllm", "")),
                                   tables[0]["model"]), tuple(point_costs), tuple(pooled))


def cautions_for(backend: str, adapter: Adapter, version: str, model: Mapping[str, Any]) -> tuple[str, ...]:
    """The target vLLM's known faults on this backend (by release, not family: 0.25 fixed one inside 0.22-0.25)."""
    head_size = int(model.get("kv_lora_rank", 512)) + int(model.get("qk_rope_head_dim", 64))
    caution = adapter.triton_serving_caution(parse_version(version), head_size) if backend == "TRITON_MLA" else None
    return (caution,) if caution else ()


def _auto_refusal(table: Mapping[str, Any]) -> str:
    """Why an ``auto`` table is not deployed: vLLM runs one decode backend per deployment (``--attention-config``'s
    backend), and every rule of a profile is priced within one backend's landscape; the backends it chose say which
    backend's own table to deploy."""
    chosen: dict[str, int] = {}
    for e in entries(table):
        for c in e.params:
            if c.get(BACKEND):
                chosen[str(c[BACKEND])] = chosen.get(str(c[BACKEND]), 0) + 1
    picks = ", ".join(f"{b} on {n} shape{'s' * (n != 1)}" for b, n in sorted(chosen.items(), key=lambda x: -x[1]))
    return (f"a backend: auto table chooses the decode backend per shape ({picks}), but a vLLM deployment runs one "
            "backend: deploy that backend's own table (mla-tune study --backend NAME ... --export)")


def _table_label(t: Mapping[str, Any]) -> str:
    m = t["model"]
    return f"{t['backend']} {m['model']}-tp{m['tp']} {'+'.join(t.get('workloads') or [])}".strip()
