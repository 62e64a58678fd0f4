from __future__ import annotations

import random

import pytest

from mla_tune import batch_spec
from mla_tune.errors import BatchSpecError
from mla_tune.types import Request, Shape


@pytest.mark.parametrize("spec, expected", [
    ("64q1s4k", [Request(1, 4096)] * 64),
    ("q2k", [Request(2048, 2048)]),
    ("16q4s1k", [Request(4, 1024)] * 16),
    ("2q2k_32q1s1k", [Request(2048, 2048)] * 2 + [Request(1, 1024)] * 32),
    ("q1ks4k", [Request(1024, 4096)]),
    ("3q5s100", [Request(5, 100)] * 3),
    ("q1s6t", [Request(1, 6)]),  # a context under 16 tokens, on purpose
    ("q1s100t", [Request(1, 100)]),
    ("q1s16", [Request(1, 16)]),
])
def test_parse(spec, expected):
    assert batch_spec.parse(spec).requests == tuple(expected)


@pytest.mark.parametrize("spec, canonical", [("64q1s4096", "64q1s4k"), ("1q2048", "q2k"), ("q1s1k_q1s1k", "2q1s1k"),
                                             ("q1s100t", "q1s100"), ("q2s6t", "q2s6t")])
def test_canonical(spec, canonical):
    assert batch_spec.canonical(spec) == canonical


def test_round_trip_on_random_shapes():
    rng = random.Random(0)
    for _ in range(300):
        reqs = []
        for _ in range(rng.randint(1, 4)):
            q = rng.choice([1, 2, 4, 7, 1024, 3000])
            kv = q + rng.choice([0, 0, 5, 1024, 4096])
            reqs += [Request(q, kv)] * rng.randint(1, 5)
        shape = Shape(tuple(reqs))
        assert batch_spec.parse(batch_spec.format(shape)) == shape


@pytest.mark.parametrize("spec, segment, reason", [
    ("64q1s4k_x", "x", "expected"),
    ("64q0s4k", "64q0s4k", "q_len"),
    ("0q1s4k", "0q1s4k", "count"),
    ("q4ks1k", "q4ks1k", "shorter"),
    ("", "", "empty"),
    ("64q1s4k__q1", "", "expected"),
    ("64q1s4", "64q1s4", "a context of 4 tokens: for 4096 write s4k (a context under 16 tokens is written s4t)"),
    ("q1s1k_8q1s15", "8q1s15", "write s15k"),
    ("q4s2t", "q4s2t", "shorter"),
    ("q8s4", "q8s4", "write s4k"),  # a forgotten k, not a context shorter than the query
])
def test_errors_name_the_segment(spec, segment, reason):
    with pytest.raises(BatchSpecError) as e:
        batch_spec.parse(spec)
    assert e.value.segment == segment and reason in str(e.value)


@pytest.mark.parametrize("spec, kind", [("64q1s4k", "decode"), ("q2k", "prefill"), ("16q4s1k", "spec-decode"),
                                        ("q1ks4k", "extend"), ("q2k_32q1s1k", "mixed")])
def test_classify(spec, kind):
    assert batch_spec.classify(batch_spec.parse(spec)) == kind
