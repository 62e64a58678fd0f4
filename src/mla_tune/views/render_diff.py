"""Terminal rendering of a table diff (rich): a header per table, a row per shape, a summary line."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from ..tables.diff import ShapeDiff, Side, TableDiff
from ..tables.landscape import Verdict, latency_text, setting_text
from .text import add_row, say


def result_text(v: Verdict | None) -> str:
    """The confirmed speedup with its interval; for a kept default, the best candidate that did not clear noise."""
    if v is None:
        return "-"
    if v.tuned and v.confirmed:
        return v.confirmed.text()
    if v.failed:
        return "-"
    if v.candidate:
        return f"kept (best {v.candidate[1].text()})"
    return "kept" if v.confirmed else "-"


def disagreement_text(row: ShapeDiff, d: TableDiff) -> str:
    if row.status.startswith("only"):
        side = d.a if row.status == "only A" else d.b
        return f"{row.status} ({side.source.gpu_short})"
    if row.status == "same":
        return "-"
    parts = [f"{x.knob} {x.a}→{x.b}" for x in row.disagreements]
    if row.a is not None and row.b is not None and row.a.tuned != row.b.tuned and not parts:
        parts.append(f"tuned only in {'A' if row.a.tuned else 'B'}")
    if row.a is not None and row.b is not None and row.a.failed != row.b.failed:
        parts.append(f"fails only in {'A' if row.a.failed else 'B'}")
    return ", ".join(parts)


def _side_line(name: str, side: Side) -> str:
    return f"{name}: {side.source.path}\n   {side.engine}; {side.source.line}"


def print_diff(console: Console, d: TableDiff) -> None:
    say(console, _side_line("A", d.a))
    say(console, _side_line("B", d.b))
    if d.header:
        say(console, "tables differ in: " + "; ".join(f"{h.knob} {h.a} vs {h.b}" for h in d.header))
    tag = {n: " (replay)" if s.source.replay else "" for n, s in (("A", d.a), ("B", d.b))}
    t = Table("shape", "A setting", f"A ms{tag['A']}\ndefault → tuned", f"A speedup{tag['A']}\n[CI]",
              "B setting", f"B ms{tag['B']}\ndefault → tuned", f"B speedup{tag['B']}\n[CI]", "B/A\nms",
              "where they disagree")
    for row in d.rows:
        ratio = row.latency_ratio
        add_row(t, row.label, setting_text(row.a), latency_text(row.a), result_text(row.a),
                  setting_text(row.b), latency_text(row.b), result_text(row.b),
                  "-" if ratio is None else f"{ratio:.2f}", disagreement_text(row, d))
    say(console, t)
    both = len(d.rows) - d.count("only A") - d.count("only B")
    say(console, f"{both} shapes in both tables ({d.count('differ')} differ, {d.count('same')} the same); "
                  f"{d.count('only A')} only in A, {d.count('only B')} only in B")
    say(console, "ms: confirmation medians of vLLM's default and of the tuned setting; speedup: geometric mean of "
                  "the confirmation rounds [95% family-wise interval]; B/A: B's deployed latency over A's")
