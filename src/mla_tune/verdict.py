"""Which confirmed candidate (if any) beats vLLM's default: pure, shared by confirmation, tables and ``show``.

Several candidates are confirmed per study and the best significant one wins, so each interval is taken at the
Bonferroni level ``1 - 0.05/k``: the chance that noise alone crowns any of the ``k`` stays at 5%.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from .records import Candidate, Confirmation
from .stats import familywise_level, paired_speedup, round_sig

FAMILY_LEVEL = 0.95


def judge_candidates(candidates: Sequence[Candidate]) -> tuple[list[Candidate], int | None]:
    """Recompute every ok candidate's speedup and interval from its per-round latencies; pick the winner.

    Returns the candidates (``speedup``, ``ci``, ``ci_level``, ``significant`` set) and the index of the one with
    the best speedup among those whose whole interval lies above 1, or None.
    """
    ok = [c for c in candidates if c.status == "ok" and c.rounds is not None]
    level = familywise_level(len(ok), FAMILY_LEVEL)
    out = []
    for c in candidates:
        if c.status == "ok" and c.rounds is not None:
            ps = paired_speedup(c.rounds.default, c.rounds.best, level)
            c = replace(c, speedup=round_sig(ps.speedup, 4), ci=(round_sig(ps.ci_low, 4), round_sig(ps.ci_high, 4)),
                        ci_level=round_sig(level, 4), significant=ps.significant)
        elif c.status == "ok":  # no rounds kept: nothing to recompute, so nothing can be claimed
            c = replace(c, ci=c.ci if c.ci is not None else (0.0, math.inf),
                        ci_level=c.ci_level if c.ci_level is not None else level, significant=False)
        out.append(c)
    wins = [(c.speedup, i) for i, c in enumerate(out) if c.status == "ok" and c.significant]
    return out, (max(wins)[1] if wins else None)


def judged(conf: Confirmation) -> Confirmation:
    """``conf`` with its candidates and winner recomputed from its rounds (current statistics, raw data)."""
    cands, winner = judge_candidates(conf.candidates)
    return replace(conf, candidates=tuple(cands), winner=winner)


def judge(candidates: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int | None]:
    """``judge_candidates`` over stored candidates (``Candidate.to_attrs``): the candidates as stored attrs with
    the verdict set, and the winner's index."""
    cands, winner = judge_candidates([Candidate.from_attrs(c) for c in candidates])
    return [c.to_attrs() for c in cands], winner


__all__ = ["FAMILY_LEVEL", "judge", "judge_candidates", "judged"]
