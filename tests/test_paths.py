"""File names built from data: one safe component, and a join that never leaves its folder."""

from __future__ import annotations

import os

import pytest

from mla_tune.errors import UsageError
from mla_tune.paths import MAX_COMPONENT, join_inside, safe_component
from mla_tune.types import Environment, gpu_short_name


@pytest.mark.parametrize("text, safe", [
    ("H100", "H100"),
    ("H200-TRITON_MLA-deepseek-v3-tp1-heatmap-num_kv_splits", "H200-TRITON_MLA-deepseek-v3-tp1-heatmap-num_kv_splits"),
    ("../../../../tmp/escape", "tmp-escape"),
    ("/etc/passwd", "etc-passwd"),
    ("..", "unnamed"),
    (".hidden", "hidden"),
    ("-rf", "rf"),
    ("a\\b\x00c\x1b[2Jd", "a-b-c-2Jd"),
    ("H100 80GB", "H100-80GB"),
    ("", "unnamed"),
    ("Ünïcode/名前", "n-code"),
])
def test_safe_component_keeps_letters_digits_dot_underscore_dash_only(text, safe):
    assert safe_component(text) == safe
    assert "/" not in safe and not safe.startswith((".", "-"))


def test_safe_component_is_bounded_and_idempotent():
    long = safe_component("x" * 10_000)
    assert len(long) == MAX_COMPONENT
    assert safe_component(safe_component("../a b/../c")) == safe_component("../a b/../c")
    assert safe_component("////", fallback="GPU") == "GPU"


def test_join_inside_refuses_anything_that_leaves_the_folder(tmp_path):
    assert join_inside(tmp_path, "a.png") == tmp_path / "a.png"
    for name in ("../a.png", "/tmp/a.png", "sub/a.png", "..", "", "."):
        with pytest.raises(UsageError, match="would not be directly inside"):
            join_inside(tmp_path, name)
    os.symlink("/tmp", tmp_path / "link")  # a link placed in the folder does not lead writes out of it
    with pytest.raises(UsageError):
        join_inside(tmp_path, "link")


@pytest.mark.parametrize("name, short", [
    ("NVIDIA H100 80GB HBM3", "H100"),
    ("NVIDIA ../../../../tmp/x", "tmp-x"),
    ("/abs/path", "abs-path"),
    ("NVIDIA", "GPU"),
    ("NVIDIA ..", "GPU"),
])
def test_gpu_short_names_are_safe_components(name, short):
    assert gpu_short_name(name) == short
    env = Environment(runner="replay", gpu_name=name, compute_capability="9.0", sm_count=1)
    assert env.fingerprint == f"{short}-replay" and "/" not in env.fingerprint
