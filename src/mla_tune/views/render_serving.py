"""Terminal text for the serving commands: ``flags``, ``deploy`` and ``verify``. Pure: data in, lines out (each
line ``printable``: no control character from a table or profile reaches the terminal)."""

from __future__ import annotations

from typing import Any

from ..space_auto import AUTO
from ..tables.entry import TableEntry
from .render import _env_line
from .text import printable


def _verdict(e: TableEntry) -> str:
    if e.error is not None:
        return "FAILS here"
    if e.tuned and e.confirmed is not None:
        ci = e.confirmed.ci
        return f"x{e.confirmed.speedup:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
    return "default kept"


def _cost_line(c: Any) -> str:
    known = [(s, r) for s, r in c.ratios if r is not None]
    unknown = [s for s, r in c.ratios if r is None]
    worse = [f"{s} x{r:.3f}" for s, r in known if r < 0.995]
    text = f"#   as a global flag {c.knob}={c.value} "
    if worse:
        text += "costs " + ", ".join(worse)
    elif known:
        text += f"costs nothing measured on {len(known)} other shape(s)"
    else:
        text += "has no measured cost on the other shapes"
    if unknown:
        text += f"; not measured on {', '.join(unknown[:6])}{' ...' if len(unknown) > 6 else ''}"
    if c.per_batch:
        text += "; per batch size: mla-tune deploy + the plugin"
    return text


def flag_lines(table: dict[str, Any], flags: list[Any], adapter: Any, only_shape: str | None = None,
               cautions: tuple[str, ...] = ()) -> list[str]:
    """Per entry: shape, verdict, the serving arguments of ``adapter``'s vLLM, and what each changed value costs
    on the table's other shapes if set globally; then the target vLLM's known faults to stay clear of."""
    m = table["model"]
    head = (f"# {table['backend']} on {m['model']} tp{m['tp']}, kv {table['kv_cache_dtype']}: "
            f"{_env_line(table['provenance'])}; flags for {adapter.label}")
    lines, plugin, missing = [], set(), set()
    for f in flags:
        if only_shape is not None and f.label != only_shape:
            continue
        lines.append(f"{f.label:<18} {_verdict(f.entry):<24} {f.settings.args()}")
        lines += [_cost_line(c) for c in f.costs]
        plugin.update(f.settings.plugin_only)
        missing.update(f.settings.missing)
    if lines and plugin:
        lines.append(f"# no {adapter.label} setting (the mla-tune plugin applies them: mla-tune deploy): "
                     f"{', '.join(sorted(plugin))}")
    if lines and missing:
        lines.append(f"# not available in {adapter.label}: {', '.join(sorted(missing))}")
    if lines:
        lines.append("# vLLM's settings are global per deployment; `mla-tune deploy` picks values per batch size "
                     "and one value per global knob for your traffic")
    if lines:
        lines += [f"# caution: {c}" for c in cautions]
    if lines and table["backend"] == AUTO:
        lines.append("# backend: auto chose the decode backend per shape, but a deployment runs one: serve the one "
                     "that wins your traffic, with its own table (mla-tune study --backend NAME --export)")
    return [printable(x) for x in (head, *lines)] if lines else []


def deploy_lines(d: Any, output: str) -> list[str]:
    p = d.profile
    m = p.match
    lines = [f"profile for {m.backend} on {m.gpu} (SM {m.compute_capability}), {m.num_q_heads} heads per GPU, "
             f"kv {m.kv_cache_dtype}, vLLM {m.vllm}; traffic: {p.provenance.get('traffic')}"]
    for rule in p.per_batch:
        pts = ", ".join(f"{pt.tokens}{'@' + str(pt.context) if pt.context else ''} -> {pt.value}" for pt in rule.points)
        lines.append(f"  per batch  {rule.knob}: {pts}  (decode tokens; nearest measured)")
        for q in (q for q in getattr(d, "pooled", ()) if q.knob == rule.knob):
            lines.append(f"             pooled: {q.tokens} -> {q.value} follows {q.after}'s confirmed value; not "
                         f"confirmed at {q.shapes} alone, where it measured x{q.own_ratio:.3f}")
        lines += _point_cost_lines([c for c in d.point_costs if c.knob == rule.knob])
    for name, value in p.at_build:
        lines.append(f"  at build   {name}={value}  (plugin)")
    for g in d.globals_:
        mark = "" if g.value == g.default else f"  (vLLM's default: {g.default})"
        lines.append(f"  global     {g.knob}={g.value}{mark}")
        if g.value != g.default:
            for spec, w, ms, own in g.costs:
                if ms and own and w:
                    lines.append(f"             on {spec} (weight {w:g}): {ms:.4g} ms vs its own best {own:.4g} ms")
        for value, why in g.rejected:
            lines.append(f"             not {g.knob}={value}: {why}")
    if not p.per_batch and not p.at_build and all(g.value == g.default for g in d.globals_):
        lines.append("  nothing to change: vLLM's defaults are what the tables measured best")
    if d.unmeasured:
        lines.append(f"  not measured (vLLM's defaults serve them): {', '.join(d.unmeasured)}")
    if d.skipped:
        lines.append(f"  left out: {'; '.join(d.skipped)}")
    for caution in d.cautions:
        lines.append(f"  caution: {caution}")
    lines.append(f"wrote {output}")
    lines.append(f"serve with: MLA_TUNE_PROFILE={output} vllm serve MODEL {d.settings.args()}".rstrip())
    return [printable(x) for x in lines]


def _point_cost_lines(costs: list[Any]) -> list[str]:
    """Per point, what its value costs the other shapes it serves (the other contexts of its batch size), as each
    one's latency with the point's value against its own best: x0.910 is 10% slower there."""
    lines = []
    for (tokens, value), group in _grouped(costs).items():
        parts = [f"{c.shape} " + (f"x{c.own / c.ms:.3f}" if c.ms and c.own else "not measured") for c in group]
        lines.append(f"             {tokens} -> {value} on the other shapes of that batch: {', '.join(parts)} "
                     "vs each one's own best")
    return lines


def _grouped(costs: list[Any]) -> dict[tuple[int, Any], list[Any]]:
    out: dict[tuple[int, Any], list[Any]] = {}
    for c in costs:
        out.setdefault((c.tokens, c.value), []).append(c)
    return out


def verify_lines(v: Any) -> list[str]:
    env = v.environment
    replay = env.runner == "replay"
    lines = [f"{v.kind} {v.target}: measured on {v.measured_on}; "
             f"re-measured on {env.gpu_name}, vLLM {env.vllm}, runner {env.runner}"
             + (" (replay: recorded samples, not this GPU)" if replay else "")]
    if not v.results:
        lines.append("nothing to verify: no tuned setting differs from vLLM's defaults")
    for r in v.results:
        changed = " ".join(f"{k}={val}" for k, val in sorted(r.item.tuned.items()) if r.item.default.get(k) != val)
        if r.verdict == "failed":
            lines.append(f"  {r.item.shape:<16} {changed:<28} FAILED    {r.message}")
            continue
        claim = f"  (recorded x{r.item.claimed:.3f})" if r.item.claimed else ""
        floor = f", floor [{r.floor.ci[0]:.3f}, {r.floor.ci[1]:.3f}]" if r.floor is not None else ""
        lines.append(f"  {r.item.shape:<16} {changed:<28} {r.verdict.upper():<9} x{r.speedup:.3f} "
                     f"[{r.ci[0]:.3f}, {r.ci[1]:.3f}] at {r.level:.1%}{' replay' if replay else ''}; "
                     f"{r.default_ms:.4g} -> {r.tuned_ms:.4g} ms; {r.rounds} rounds{floor}{claim}")
    gpu = sum(r.gpu_s for r in v.results)
    if v.results:
        lines.append(f"device time timed: {gpu:.1f} s{' (replay: as recorded)' if replay else ''}")
    counts = {k: sum(1 for r in v.results if r.verdict == k) for k in ("holds", "no gain", "slower", "failed")}
    lines.append(", ".join(f"{n} {k}" for k, n in counts.items()) + (" (exit 1: a setting is slower than vLLM's "
                 "default here, or could not run)" if counts["slower"] or counts["failed"] else ""))
    return [printable(x) for x in lines]
