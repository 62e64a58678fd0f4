from __future__ import annotations

import math

import pytest

from mla_tune.stats import paired_speedup, round_sig, t95


def test_paired_speedup_of_a_clear_gain_is_significant():
    a = [1.00, 1.02, 0.99, 1.01, 1.00, 1.03]
    b = [x / 1.10 for x in a]
    ps = paired_speedup(a, b)
    assert ps.speedup == pytest.approx(1.10) and ps.significant
    assert ps.ci_low == pytest.approx(1.10) and ps.rounds == 6


def test_paired_design_cancels_drift():
    drift = [1.0, 1.2, 1.4, 1.6, 1.8, 2.0]  # the machine slows down over the rounds
    a = [d * 1.00 for d in drift]
    b = [d / 1.02 for d in drift]
    assert paired_speedup(a, b).ci_low > 1.0  # unpaired medians would drown 2% in a 2x drift


def test_noise_is_not_a_gain():
    a = [1.00, 1.01, 0.99, 1.00]
    b = [1.00, 0.99, 1.01, 1.00]
    ps = paired_speedup(a, b)
    assert not ps.significant and ps.ci_low < 1 < ps.ci_high


def test_errors_and_helpers():
    with pytest.raises(ValueError):
        paired_speedup([1.0], [1.0, 2.0])
    assert t95(1) == 12.706 and t95(100) == 1.96
    assert round_sig(1.23456789, 3) == 1.23 and round_sig(0.000123456, 2) == 0.00012
    assert math.isinf(round_sig(math.inf))
