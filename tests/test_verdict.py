"""Judging confirmations: the Bonferroni interval against 1, and against the study's noise floor."""

from __future__ import annotations

import pytest

from mla_tune.records import Candidate, Rounds
from mla_tune.study.verdict import judge_candidates, verdict_of

DEFAULT = (1.000, 1.002, 0.999, 1.001, 1.000, 1.002)


def candidate(trial: int, speedup: float, again_bias: float | None = None) -> Candidate:
    """Rounds where the candidate runs ``speedup`` faster than the default, and the default's second build
    ``again_bias`` faster than its first (None: rounds stored before the floor existed)."""
    best = tuple(x / speedup for x in DEFAULT)
    again = None if again_bias is None else tuple(x / again_bias * (1 + 0.0005 * (-1) ** i)
                                                 for i, x in enumerate(DEFAULT))
    return Candidate(trial, ({"s": trial},), "ok", default_ms=1.0, best_ms=1.0 / speedup,
                     samples={"default": 120, "best": 120}, rounds=Rounds(DEFAULT, best, again))


def test_a_gain_must_clear_the_noise_floor_as_well_as_1():
    cands, winner, floor = judge_candidates([candidate(1, 1.010, 1.012), candidate(2, 1.100, 1.012)])
    assert floor is not None and floor.rounds == 12 and floor.speedup == pytest.approx(1.012, abs=1e-3)
    small, large = cands
    assert small.ci[0] > 1 and not small.significant and verdict_of(small, floor) == "under floor"
    assert large.significant and winner == 1 and verdict_of(large, floor) == "tuned"


def test_a_floor_at_1_changes_nothing_and_no_floor_is_judged_against_1_alone():
    for bias in (1.0, None):
        cands, winner, floor = judge_candidates([candidate(1, 1.010, bias)])
        assert winner == 0 and cands[0].significant
        assert (floor is None) == (bias is None)


def test_verdicts_of_what_did_not_win():
    slower, = judge_candidates([candidate(1, 0.95, 1.0)])[0]
    assert verdict_of(slower, None) == "slower"
    failed = Candidate(2, ({"s": 2},), "failed", message="64q1s4k: oom: out of memory")
    assert verdict_of(failed, None) == "failed"


def test_judging_stored_candidates_keeps_what_it_does_not_recompute():
    stored = [candidate(1, 1.010, 1.012).to_attrs() | {"ci95": [1.0, 1.02]},
              {"trial": 2, "configs": [{"s": 2}], "status": "failed", "message": "64q1s4k: oom: no"}]
    judged, winner, _ = judge_candidates([Candidate.from_attrs(c) for c in stored])
    out = [c.to_attrs() for c in judged]
    assert winner is None and out[0]["significant"] is False and out[0]["ci95"] == [1.0, 1.02]
    assert out[1] == stored[1] and out[0]["round_ms"]["again"] == stored[0]["round_ms"]["again"]
