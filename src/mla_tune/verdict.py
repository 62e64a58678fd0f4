"""Which confirmed candidate (if any) beats vLLM's default: pure, shared by confirmation and tables.

Several candidates are confirmed per study and the best significant one wins, so each interval is taken at the
Bonferroni level ``1 - 0.05/k``: the chance that noise alone crowns any of the ``k`` stays at 5%.
"""

from __future__ import annotations

from typing import Any

from .stats import familywise_level, paired_speedup, round_sig

FAMILY_LEVEL = 0.95


def judge(candidates: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int | None]:
    """Recompute every ok candidate's speedup and interval from its per-round latencies; pick the winner.

    Returns the candidates (with ``speedup``, ``ci``, ``ci_level``, ``significant`` set) and the index of the
    one with the best speedup among those whose whole interval lies above 1, or None.
    """
    ok = [c for c in candidates if c.get("status") == "ok" and c.get("round_ms")]
    level = familywise_level(len(ok), FAMILY_LEVEL)
    out = []
    for c in candidates:
        c = dict(c)
        if c.get("status") == "ok" and c.get("round_ms"):
            ps = paired_speedup(c["round_ms"]["default"], c["round_ms"]["best"], level)
            c.update(speedup=round_sig(ps.speedup, 4), ci=[round_sig(ps.ci_low, 4), round_sig(ps.ci_high, 4)],
                     ci_level=round_sig(level, 4), significant=ps.significant)
        elif c.get("status") == "ok":  # no rounds kept: nothing to recompute, so nothing can be claimed
            c.update(ci=c.get("ci", [0.0, float("inf")]), ci_level=c.get("ci_level", level), significant=False)
        out.append(c)
    wins = [(c["speedup"], i) for i, c in enumerate(out) if c.get("status") == "ok" and c.get("significant")]
    return out, (max(wins)[1] if wins else None)
