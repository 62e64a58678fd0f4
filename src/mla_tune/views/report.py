"""One self-contained HTML report of tuning tables: provenance, what to deploy, the plots, what was not tuned.

Everything is inside the file (CSS inline, pictures as base64 data URIs, no script, nothing fetched), every
piece of text from a table is escaped, and the bytes depend only on the tables (no generation time).
"""

from __future__ import annotations

import base64
from html import escape
from pathlib import Path

from .. import __version__
from ..tables.export import write_atomic
from ..tables.landscape import Landscape, ShapeLandscape, Verdict, latency_text, setting_text
from .plots import pictures

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;max-width:1180px;
color:#1d1d1f;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{margin-top:2.2em;border-bottom:2px solid #ddd;padding-bottom:.2em}
h3{margin-top:1.6em}table{border-collapse:collapse;margin:.6em 0 1em}
th,td{border:1px solid #d0d0d0;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
code{background:#f3f3f3;padding:0 .25em;border-radius:3px}dl{display:grid;grid-template-columns:max-content auto;
gap:.15em 1em}dt{font-weight:600}dd{margin:0}.replay{background:#fff3cd;border:1px solid #e0b000;
padding:.4em .8em;border-radius:4px}.tag{font-size:.75em;background:#e0b000;color:#000;padding:.1em .4em;
border-radius:3px;vertical-align:middle}figure{margin:1em 0}figure img{max-width:100%;height:auto;
border:1px solid #e5e5e5}figcaption{color:#555;font-size:.9em}.muted{color:#666}
"""


def render_report(landscapes: list[Landscape]) -> str:
    """The report as one HTML document (text; the pictures inside it)."""
    intro = (f"<h1>mla-tune report</h1><p class=muted>vLLM MLA attention settings measured per batch shape, from "
             f"{len(landscapes)} tuning table{'s' if len(landscapes) != 1 else ''}. Speedups are over vLLM's "
             "default; intervals are 95% family-wise over the confirmed candidates.</p>")
    body = [intro, _overview(landscapes)]
    body += [_section(i, ls) for i, ls in enumerate(landscapes, start=1)]
    body.append(f"<p class=muted>Written by mla-tune {escape(__version__)}. Serve a table with "
                "<code>mla-tune deploy TABLE... -o profile.yaml</code>.</p>")
    return ("<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
            "<meta name=viewport content='width=device-width, initial-scale=1'><title>mla-tune report</title>"
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_report(landscapes: list[Landscape], path: Path) -> Path:
    return write_atomic(Path(path), render_report(landscapes))


def _overview(landscapes: list[Landscape]) -> str:
    rows = []
    for i, ls in enumerate(landscapes, start=1):
        tuned = sum(1 for s in ls.shapes if s.verdict and s.verdict.tuned)
        rows.append(f"<tr><td><a href='#t{i}'>{escape(ls.engine)}</a>{_tag(ls)}</td><td>{escape(ls.source.tag)}"
                    f"</td><td class=num>{tuned} of {len(ls.shapes)}</td><td>{escape(ls.source.path)}</td></tr>")
    return ("<table><tr><th>table</th><th>source</th><th>shapes tuned</th><th>file</th></tr>"
            + "".join(rows) + "</table>")


def _tag(ls: Landscape) -> str:
    return " <span class=tag>replay</span>" if ls.source.replay else ""


def _section(i: int, ls: Landscape) -> str:
    src = ls.source
    parts = [f"<h2 id=t{i}>{escape(ls.engine)} on {escape(src.gpu_short)}{_tag(ls)}</h2>"]
    if src.replay:
        parts.append("<p class=replay>Replayed: these numbers were drawn from recorded samples by the replay "
                     "runner, not measured when this table was made.</p>")
    fields = [("file", src.path), ("GPU", f"{src.gpu} (SM {src.compute_capability})"), ("vLLM", src.vllm),
              ("torch", src.torch), ("CUDA", src.cuda), ("driver", src.driver), ("runner", src.runner),
              ("date", src.date or "unknown"), ("mla-tune", src.mla_tune), ("KV cache", ls.kv_cache_dtype)]
    parts.append("<dl>" + "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in fields) + "</dl>")
    parts += [_deploy(ls), _not_tuned(ls), _figures(ls)]
    return "\n".join(parts)


def _deploy(ls: Landscape) -> str:
    tuned = [s for s in ls.shapes if s.verdict and s.verdict.tuned]
    head = "<h3>What to deploy</h3>"
    if not tuned:
        return head + "<p>Nothing: no setting beat vLLM's default beyond noise here; keep the defaults.</p>"
    rows = "".join(f"<tr><td>{escape(s.label)}</td><td><code>{escape(setting_text(s.verdict))}</code></td>"
                   f"<td class=num>{escape(_interval(s.verdict))}</td><td class=num>{escape(latency_text(s.verdict))}"
                   "</td></tr>" for s in tuned)
    replay = " (replay)" if ls.source.replay else ""
    return (head + "<table><tr><th>shape</th><th>setting (vs vLLM's default)</th><th>confirmed speedup"
            f"{replay} [95% family-wise interval]</th><th>ms{replay}: default → tuned</th></tr>" + rows + "</table>")


def _interval(v: Verdict | None) -> str:
    return "-" if v is None or v.confirmed is None else v.confirmed.text()


def _not_tuned(ls: Landscape) -> str:
    kept = [s for s in ls.shapes if not (s.verdict and s.verdict.tuned)]
    if not kept:
        return "<h3>Not tuned</h3><p>Every shape was tuned.</p>"
    rows = "".join(f"<tr><td>{escape(s.label)}</td><td>{escape(_why(s))}</td>"
                   f"<td class=num>{escape(_candidate(s.verdict))}</td></tr>" for s in kept)
    return ("<h3>Not tuned, and why</h3><table><tr><th>shape</th><th>why vLLM's default is kept</th>"
            "<th>best candidate</th></tr>" + rows + "</table>")


def _why(s: ShapeLandscape) -> str:
    v = s.verdict
    if v is None:
        return "no verdict in the table"
    return v.note + (f" (error: {v.error})" if v.error else "")


def _candidate(v: Verdict | None) -> str:
    if v is None or v.candidate is None:
        return "-"
    configs, iv = v.candidate
    defaults = dict(v.default_params[0]) if v.default_params else {}
    changes = [f"{k}={x}" for k, x in configs[0] if defaults.get(k) != x] if len(configs) == 1 else ["per shape"]
    return f"{' '.join(changes) or 'same kernels as the default'}: {iv.text()}"


def _figures(ls: Landscape) -> str:
    out = ["<h3>Pictures</h3>"]
    pics = pictures(ls)
    if not pics:
        return "<h3>Pictures</h3><p class=muted>The table records no landscape to draw.</p>"
    for pic in pics:
        data = base64.b64encode(pic.png).decode("ascii")
        out.append(f"<figure><img src='data:image/png;base64,{data}' alt='{escape(pic.title)}'>"
                   f"<figcaption>{escape(pic.title)} ({escape(pic.name)})</figcaption></figure>")
    return "\n".join(out)
