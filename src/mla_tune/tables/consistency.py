"""A table entry must agree with itself: what ``show`` prints and ``deploy`` serves is what its own numbers say.

The loader checks each value's type and bounds; these checks relate the values of one entry to each other, so a
speedup edited to x3.0 next to its own interval of [1.05, 1.06] is refused, naming the entry, rather than shown
and deployed. A table mla-tune writes passes them (``write_table`` checks before writing).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import DataFileError

# The speedup is the geometric mean of the per-round ratios, the latencies the medians of the rounds, so the two
# differ by the rounds' noise: 1.4% at most in the committed tables. A factor of 1.25 never refuses a real entry
# and still refuses a speedup edited away from its latencies (a tampered x3.0 over latencies of x1.05).
LATENCY_TOLERANCE = 1.25
ROUNDING = 5e-4  # values are stored to 4-5 significant digits: an interval's ends may be rounded past its centre


def check_entry(path: Path, where: str, label: str, e: dict[str, Any]) -> None:
    """``e`` (an entry whose values are each valid) agrees with itself, else one ``DataFileError`` naming it."""
    def refuse(key: str, reason: str) -> None:
        raise DataFileError(str(path), f"{where}.{key}", f"{reason} ({label}): the entry contradicts itself; "
                            "the table was edited or damaged, export it again")

    for at, x in (("", e), ("best_candidate.", e.get("best_candidate") or {})):
        if "speedup" in x and "ci" in x and not _within(x["speedup"], *x["ci"]):
            refuse(f"{at}speedup", f"is x{x['speedup']:g}, outside its own interval [{x['ci'][0]:g}, {x['ci'][1]:g}]")
    speedup, ms = e.get("speedup"), e.get("latency_ms") or {}
    if e["tuned"]:
        if speedup is not None and speedup <= 1:
            refuse("speedup", f"is x{speedup:g}, but a tuned entry is faster than vLLM's default (above x1)")
        if "ci" in e and e["ci"][0] <= 1:
            refuse("ci", f"starts at {e['ci'][0]:g}, but a tuned entry's interval lies above 1")
        if speedup is not None and ms.get("best") is not None:
            ratio = ms["default"] / ms["best"]
            if not 1 / LATENCY_TOLERANCE <= ratio / speedup <= LATENCY_TOLERANCE:
                refuse("speedup", f"is x{speedup:g}, but its latencies say x{ratio:.3f} "
                       f"({ms['default']:g} -> {ms['best']:g} ms)")
        return
    # vLLM's default kept: no gain claimed, and the default's own settings served
    if speedup is not None and speedup != 1:
        refuse("speedup", f"is x{speedup:g}, but the entry keeps vLLM's default (tuned: false), which is x1")
    if ms.get("best") is not None and ms["best"] != ms["default"]:
        refuse("latency_ms.best", f"is {ms['best']:g} ms, not the default's {ms['default']:g} ms, but the entry "
               "keeps vLLM's default")
    if "params" in e and "default_params" in e and e["params"] != e["default_params"]:
        refuse("params", "differ from default_params, but the entry keeps vLLM's default (tuned: false)")


def _within(x: float, low: float, high: float) -> bool:
    return low * (1 - ROUNDING) <= x <= high * (1 + ROUNDING)


__all__ = ["LATENCY_TOLERANCE", "check_entry"]
