"""Which confirmed candidate (if any) beats vLLM's default: pure, shared by confirmation, tables and ``show``.

Several candidates are confirmed per study and the best significant one wins, so each interval is taken at the
Bonferroni level ``1 - 0.05/k``: the chance that noise alone crowns any of the ``k`` stays at 5%.

A gain must also clear the study's noise floor: each confirmation round measures vLLM's default twice, separately
built, and a candidate's interval must lie above that default-vs-default interval as well as above 1. Two builds
of the same kernels can differ systematically (memory placement, clocks settling); a gain no larger than that
difference is not the config's. Confirmations stored before the floor existed are judged against 1 alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

from ..records import Candidate, Confirmation, NoiseFloor, Rounds
from ..stats import PairedSpeedup, familywise_level, paired_speedup, round_sig

FAMILY_LEVEL = 0.95


def judge_candidates(candidates: Sequence[Candidate], floor_rounds: Rounds | None = None, family: int | None = None
                     ) -> tuple[list[Candidate], int | None, NoiseFloor | None]:
    """Recompute every ok candidate's speedup and interval, and the noise floor, from the stored rounds.

    Returns the candidates (``speedup``, ``ci``, ``ci_level``, ``significant`` set), the index of the one with the
    best speedup among those whose whole interval lies above 1 and above the floor's interval (or None), and the
    floor (None where no round measured the default twice). The floor comes from ``floor_rounds`` (the default
    against its second build, recorded with the candidates) or, for older confirmations, from the candidates' own
    ``again`` rounds. ``family``: how many intervals the Bonferroni level covers (default: the ok candidates;
    ``verify`` judges its items one by one at the level of all of them).
    """
    ok = [c for c in candidates if c.status == "ok" and c.rounds is not None]
    level = familywise_level(family if family is not None else len(ok), FAMILY_LEVEL)
    floor = _floor(ok, level) if floor_rounds is None else (
        paired_speedup(floor_rounds.default, floor_rounds.best, level) if len(floor_rounds.best) >= 2 else None)
    out = []
    for c in candidates:
        if c.status == "ok" and c.rounds is not None:
            ps = paired_speedup(c.rounds.default, c.rounds.best, level)
            clears = ps.significant and (floor is None or ps.ci_low > floor.ci_high)
            c = replace(c, speedup=round_sig(ps.speedup, 4), ci=(round_sig(ps.ci_low, 4), round_sig(ps.ci_high, 4)),
                        ci_level=round_sig(level, 4), significant=clears)
        elif c.status == "ok":  # no rounds kept: nothing to recompute, so nothing can be claimed
            c = replace(c, ci=c.ci if c.ci is not None else (0.0, math.inf),
                        ci_level=c.ci_level if c.ci_level is not None else level, significant=False)
        out.append(c)
    wins = [(c.speedup, i) for i, c in enumerate(out) if c.status == "ok" and c.significant]
    stored_floor = None if floor is None else NoiseFloor(
        floor.rounds, round_sig(floor.speedup, 4), (round_sig(floor.ci_low, 4), round_sig(floor.ci_high, 4)),
        round_sig(level, 4))
    return out, (max(wins)[1] if wins else None), stored_floor


def _floor(ok: list[Candidate], level: float) -> PairedSpeedup | None:
    """Default against default over every round of every candidate that measured it twice."""
    first: list[float] = []
    again: list[float] = []
    for c in ok:
        if c.rounds is not None and c.rounds.again:
            first += c.rounds.default[:len(c.rounds.again)]
            again += c.rounds.again
    return paired_speedup(first, again, level) if len(again) >= 2 else None


def judged(conf: Confirmation) -> Confirmation:
    """``conf`` with its candidates, winner and floor recomputed from its rounds (current statistics, raw data)."""
    cands, winner, floor = judge_candidates(conf.candidates, conf.floor_rounds)
    return replace(conf, candidates=tuple(cands), winner=winner, floor=floor)


def verdict_of(c: Candidate, floor: NoiseFloor | None) -> str:
    """What a judged candidate's confirmation says: ``tuned``, ``failed``, ``slower`` (its interval below 1),
    ``under floor`` (above 1 but not above the noise floor's interval) or ``noise``."""
    if c.status != "ok":
        return "failed"
    if c.significant:
        return "tuned"
    if c.ci is None:
        return "noise"
    if c.ci[1] < 1:
        return "slower"
    if floor is not None and c.ci[0] > 1:
        return "under floor"
    return "noise"


__all__ = ["FAMILY_LEVEL", "judge_candidates", "judged", "verdict_of"]
