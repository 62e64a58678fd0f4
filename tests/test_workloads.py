"""The three spellings of a workload: a name, ``spec:`` shapes with weights, ``traffic:FILE``."""

from __future__ import annotations

from pathlib import Path

import pytest

from mla_tune.errors import BatchSpecError, DataFileError
from mla_tune.traffic import workload_traffic
from mla_tune.workloads import MAX_LIST_CHARS, WorkloadShape, format_shapes, get_workload, parse_shapes

DATA = Path(__file__).resolve().parent / "data"


def test_a_weighted_list_round_trips_and_is_canonical():
    shapes = parse_shapes("8q1s4096@0.7, 256q1s4k@0.3,q1s4k")
    assert [(s.spec, s.weight) for s in shapes] == [("8q1s4k", 0.7), ("256q1s4k", 0.3), ("q1s4k", 1.0)]
    assert format_shapes(shapes) == "8q1s4k@0.7,256q1s4k@0.3,q1s4k"
    for text in ("64q1s4k", "8q1s4k@3,256q1s4k@1e+20", "q2k@0.1,32q4s4k@2.5,2q2k_32q1s1k@1"):
        shapes = parse_shapes(text)
        assert parse_shapes(format_shapes(shapes)) == shapes


def test_spec_workloads_are_named_by_their_canonical_text():
    assert get_workload("spec:64q1s4096").name == "spec:64q1s4k"  # one shape: as before
    w = get_workload("spec:8q1s4k@3,256q1s4k")
    assert w.name == "spec:8q1s4k@3,256q1s4k" and w.specs == ("8q1s4k", "256q1s4k")
    assert [s.weight for s in w.shapes] == [3.0, 1.0] and "/" not in w.name
    assert workload_traffic("spec:8q1s4k@3,256q1s4k").weights == (("8q1s4k", 3.0), ("256q1s4k", 1.0))


@pytest.mark.parametrize(("text", "words"), [
    ("", "empty shape"),
    ("8q1s4k,,256q1s4k", "empty shape"),
    ("8q1s4k@0", "weight '0' is not a number > 0"),
    ("8q1s4k@-1", "weight '-1' is not a number > 0"),
    ("8q1s4k@nan", "weight 'nan'"),
    ("8q1s4k@inf", "weight 'inf'"),
    ("8q1s4k@1e999", "weight '1e999'"),
    ("8q1s4k@", "weight ''"),
    ("8q1s4k@1_000", "weight '1_000'"),
    ("8q1s4k,8q1s4096", "shape 8q1s4k is given twice"),
    ("8q1x4k@2", "segment '8q1x4k'"),
    ("99999999q1s4k@2", "at most 4096"),
    (",".join(["q1s4k"] * 65), "more than 64 shapes"),
    (",".join(f"{n}q1s4k" for n in range(1, 40)), f"more than {MAX_LIST_CHARS} characters"),
])
def test_bad_lists_name_the_item_and_what_is_allowed(text, words):
    with pytest.raises(BatchSpecError) as e:
        get_workload("spec:" + text)
    assert words in str(e.value)


def test_a_traffic_file_is_a_workload_with_its_weights():
    w = get_workload(f"traffic:{DATA / 'traffic.yaml'}")
    assert w.name == "traffic:traffic" and w.specs == ("q1s4k", "64q1s4k", "256q1s4k", "8q4s4k")
    assert [s.weight for s in w.shapes] == [30.0, 50.0, 20.5, 1.0]
    assert get_workload(f"traffic:{DATA / 'traffic.csv'}").specs == ("q1s4k", "64q1s4k", "256q1s4k")
    with pytest.raises(DataFileError, match="nope.yaml: not a regular file"):
        get_workload("traffic:nope.yaml")


def test_weights_are_kept_as_given():
    assert parse_shapes("q1s4k@2") == (WorkloadShape("q1s4k", parse_shapes("q1s4k")[0].shape, 2.0),)
