"""Serving profiles: the per-batch rule, padding, engine matching, loading (valid, invalid) and the golden file."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from mla_tune.cli import app
from mla_tune.errors import DataFileError
from mla_tune.serving import (
    PROFILE_KIND,
    Match,
    PerBatchRule,
    Point,
    Profile,
    RunningEngine,
    load_profile,
    mismatch,
)
from mla_tune.serving.profile import padded_tokens
from mla_tune.tables.export import dump_yaml

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden" / "profile.yaml"
FA_TABLE = ROOT / "results" / "h100" / "tables" / "FLASH_ATTN_MLA-deepseek-v3-tp1.yaml"

MATCH = Match("H100", "9.0", "FLASH_ATTN_MLA", 128, 512, 64, "auto", "0.20")
ENGINE = RunningEngine(**dataclasses.asdict(MATCH))
CAP = PerBatchRule("max_num_splits", (Point(8, 32, None, "8q1s4k"), Point(64, 8, None, "64q1s4k"),
                                      Point(256, 1, None, "256q1s4k")))
# TRITON_MLA on an eager path: points per token count and context
SPLITS = PerBatchRule("num_kv_splits", (Point(8, 4, 1024), Point(8, 16, 8192), Point(64, "auto", 4096)))


# -- the per-batch rule ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("tokens", "value"), [
    (8, 32), (64, 8), (256, 1),  # measured
    (1, 32), (7, 32),  # below the smallest: the smallest
    (30, 32), (36, 32),  # 36 is 28 from 8 and from 64: the tie goes to the smaller
    (37, 8), (100, 8), (159, 8), (160, 8), (161, 1),  # 160 ties 64 and 256
    (512, 1), (100_000, 1),  # beyond the largest: the largest
])
def test_select_nearest_token_count(tokens: int, value: int):
    assert CAP.select(tokens).value == value
    assert CAP.select(tokens, context=4096).value == value  # no point has a context: ignored
    assert not CAP.uses_context


@pytest.mark.parametrize(("tokens", "context", "value"), [
    (8, 1024, 4), (8, 2000, 4), (8, 8192, 16), (8, 5000, 16), (8, 16384, 16), (8, 512, 4),
    (8, 2896, None),  # midway (by ratio) between 1024 and 8192: beyond reach of both
    (8, 4608, 16),  # 4.5x from 1024, 1.8x from 8192
    (8, None, 4),  # no context known: the first point (smallest context)
    (30, 9000, 16),  # nearest tokens (8) first, then the nearest context there
    (40, 2048, "auto"), (40, 8192, "auto"),  # nearest tokens is 64: its only point, within reach of 4096
    # beyond CONTEXT_REACH (2x) of every point measured at the nearest token count: no value, vLLM's stays
    (8, 100_000, None), (8, 16385, None), (8, 511, None), (8, 1, None), (40, 1024, None), (40, 8193, None),
])
def test_select_with_contexts(tokens: int, context, value):
    assert SPLITS.uses_context
    point = SPLITS.select(tokens, context)
    assert (point.value if point else None) == value


def test_select_returns_the_point_with_its_shape():
    assert CAP.select(200) == Point(256, 1, None, "256q1s4k")


@pytest.mark.parametrize(("tokens", "sizes", "padded"), [
    (5, [1, 2, 4, 8, 16], 8), (4, [1, 2, 4, 8], 4), (1, [1, 2, 4], 1),
    (9, [16, 1, 8, 2, 4], 16),  # unsorted capture sizes
    (600, [1, 2, 4, 512], 600),  # beyond the largest captured size: runs eager at its own size
    (7, None, 7), (7, [], 7),
])
def test_padded_tokens(tokens: int, sizes, padded: int):
    assert padded_tokens(tokens, sizes) == padded


# -- matching the engine -------------------------------------------------------------------------------------
def test_a_matching_engine():
    assert mismatch(MATCH, ENGINE) is None


@pytest.mark.parametrize(("field", "other"), [
    ("backend", "FLASHMLA"), ("gpu", "H200"), ("compute_capability", "10.0"), ("num_q_heads", 16),
    ("kv_lora_rank", 256), ("qk_rope_head_dim", 32), ("kv_cache_dtype", "fp8"), ("vllm", "0.22-0.26"),
])
def test_each_mismatch_is_named(field: str, other):
    engine = dataclasses.replace(ENGINE, **{field: other})
    assert mismatch(MATCH, engine) == f"{field}: profile {getattr(MATCH, field)}, engine {other}"


def test_a_profile_for_a_family_range_matches_an_engine_of_a_family_inside_it():
    # a profile deployed for "0.21-0.26" before 0.26 became a family of its own still applies on 0.26
    old = dataclasses.replace(MATCH, vllm="0.21-0.26")
    assert mismatch(old, dataclasses.replace(ENGINE, vllm="0.26")) is None
    assert mismatch(old, dataclasses.replace(ENGINE, vllm="0.22-0.25")) is None
    assert mismatch(old, dataclasses.replace(ENGINE, vllm="0.33")) == "vllm: profile 0.21-0.26, engine 0.33"
    assert mismatch(dataclasses.replace(MATCH, vllm="0.26"), dataclasses.replace(ENGINE, vllm="0.22-0.25")) == \
        "vllm: profile 0.26, engine 0.22-0.25"
    assert mismatch(dataclasses.replace(MATCH, vllm="weird"), dataclasses.replace(ENGINE, vllm="0.26")) == \
        "vllm: profile weird, engine 0.26"


def test_the_first_mismatch_is_reported():
    assert mismatch(MATCH, dataclasses.replace(ENGINE, gpu="B200", backend="CUTLASS_MLA")).startswith("backend:")


# -- loading --------------------------------------------------------------------------------------------------
def _profile() -> Profile:
    return Profile(MATCH, (CAP,), (("reorder_batch_threshold", 64),),
                   (("cuda_graphs", True), ("prefill_backend", "fa3")), {"traffic": "test", "tables": ["a", "b"]})


def _write(tmp_path: Path, data: dict) -> Path:
    p = tmp_path / "profile.yaml"
    p.write_text(dump_yaml(data))
    return p


def test_round_trip(tmp_path: Path):
    profile = _profile()
    assert load_profile(_write(tmp_path, profile.to_dict())) == profile
    triton = Profile(dataclasses.replace(MATCH, backend="TRITON_MLA"), (SPLITS,))
    data = triton.to_dict()
    assert data["per_batch"]["num_kv_splits"][0] == {"tokens": 8, "context": 1024, "value": 4, "shape": ""}
    assert load_profile(_write(tmp_path, data)) == triton


def test_points_are_sorted_on_load(tmp_path: Path):
    data = _profile().to_dict()
    data["per_batch"]["max_num_splits"].reverse()
    assert load_profile(_write(tmp_path, data)).per_batch == (CAP,)


def test_sections_may_be_left_out(tmp_path: Path):
    data = {k: v for k, v in _profile().to_dict().items() if k in ("kind", "schema_version", "match")}
    assert load_profile(_write(tmp_path, data)) == Profile(MATCH)


def _broken(change):
    def make() -> dict:
        data = _profile().to_dict()
        change(data)
        return data
    return make


INVALID = {
    "wrong kind": (_broken(lambda d: d.update(kind="mla-tune/tuning-table")), "kind",
                   f"is 'mla-tune/tuning-table', expected '{PROFILE_KIND}'"),
    "no kind": (_broken(lambda d: d.pop("kind")), "kind", "missing"),
    "schema": (_broken(lambda d: d.update(schema_version=2)), "schema_version", "is 2"),
    "unknown section": (_broken(lambda d: d.update(rules={})), "rules", "unknown key"),
    "match missing a field": (_broken(lambda d: d["match"].pop("kv_lora_rank")), "match.kv_lora_rank", "missing"),
    "unknown backend": (_broken(lambda d: d["match"].update(backend="FA9")), "match.backend",
                        "unknown backend 'FA9'"),
    "heads not an int": (_broken(lambda d: d["match"].update(num_q_heads="128")), "match.num_q_heads",
                         "expected an integer >= 1, got '128'"),
    "unknown global knob": (_broken(lambda d: d["global"].update(block_size=64)), "global.block_size",
                            "unknown knob 'block_size'"),
    "global knob of another backend": (_broken(lambda d: d["global"].update(num_kv_splits=4)),
                                       "global.num_kv_splits", "num_kv_splits does not apply to FLASH_ATTN_MLA"),
    "bad global value": (_broken(lambda d: d["global"].update(cuda_graphs="yes")), "global.cuda_graphs",
                         "cuda_graphs='yes'; allowed: true or false"),
    "global not a mapping": (_broken(lambda d: d.update({"global": ["cuda_graphs"]})), "global",
                             "expected a mapping of knob: value"),
    "bad at_build value": (_broken(lambda d: d["at_build"].update(reorder_batch_threshold=0)),
                           "at_build.reorder_batch_threshold", "reorder_batch_threshold=0; allowed: a positive"),
    "unknown per_batch knob": (_broken(lambda d: d["per_batch"].update(splits=[{"tokens": 1, "value": 1}])),
                               "per_batch.splits[0].value", "unknown knob 'splits'"),
    "per_batch knob of another backend": (
        _broken(lambda d: d["per_batch"].update(num_kv_splits=[{"tokens": 1, "value": 1}])),
        "per_batch.num_kv_splits[0].value", "num_kv_splits does not apply to FLASH_ATTN_MLA"),
    "bad per_batch value": (_broken(lambda d: d["per_batch"]["max_num_splits"][1].update(value="many")),
                            "per_batch.max_num_splits[1].value", "max_num_splits='many'; allowed: a positive"),
    "duplicate point": (_broken(lambda d: d["per_batch"]["max_num_splits"].append({"tokens": 64, "value": 2})),
                        "per_batch.max_num_splits[3]", "a second point for tokens=64 context=None"),
    "zero tokens": (_broken(lambda d: d["per_batch"]["max_num_splits"][0].update(tokens=0)),
                    "per_batch.max_num_splits[0].tokens", "expected an integer >= 1, got 0"),
    "bool context": (_broken(lambda d: d["per_batch"]["max_num_splits"][0].update(context=True)),
                     "per_batch.max_num_splits[0].context", "expected an integer >= 1, got True"),
    "point without value": (_broken(lambda d: d["per_batch"]["max_num_splits"][0].pop("value")),
                            "per_batch.max_num_splits[0].value", "missing"),
    "no points": (_broken(lambda d: d["per_batch"].update(max_num_splits=[])), "per_batch.max_num_splits",
                  "needs 1 to 4096 points"),
    "points not a list": (_broken(lambda d: d["per_batch"].update(max_num_splits={"tokens": 1, "value": 1})),
                          "per_batch.max_num_splits", "expected a list of {tokens, value}"),
    # a knob in a section the plugin does not apply it from would be logged as applied and then ignored
    "global-only knob per batch": (_broken(lambda d: d["per_batch"].update(cuda_graphs=[{"tokens": 1,
                                                                                          "value": False}])),
                                   "per_batch.cuda_graphs", "cuda_graphs cannot be set per batch"),
    "per-batch knob at build": (_broken(lambda d: d["at_build"].update(max_num_splits=1)),
                                "at_build.max_num_splits", "max_num_splits cannot be set at build"),
    "provenance not a mapping": (_broken(lambda d: d.update(provenance="x")), "provenance", "expected a mapping"),
    # a point agrees with the batches it names: its value cannot be moved to another batch size by editing it
    "tokens edited away from the shape": (_broken(lambda d: d["per_batch"]["max_num_splits"][1].update(tokens=8192)),
                                          "per_batch.max_num_splits[1]", "is a point for 8192 tokens, but its shape "
                                          "64q1s4k has 64 tokens at context 4096"),
    "context edited away from the shape": (
        _broken(lambda d: d["per_batch"]["max_num_splits"][1].update(context=65536)), "per_batch.max_num_splits[1]",
        "is a point for 64 tokens at context 65536, but its shape 64q1s4k has 64 tokens at context 4096"),
    "shape not a batch": (_broken(lambda d: d["per_batch"]["max_num_splits"][1].update(shape="64q1s4k+huge")),
                          "per_batch.max_num_splits[1].shape", "invalid batch spec 'huge'"),
}


@pytest.mark.parametrize("case", INVALID)
def test_invalid_profile_is_one_line_naming_file_and_key(tmp_path: Path, case: str):
    make, key, reason = INVALID[case]
    p = _write(tmp_path, make())
    with pytest.raises(DataFileError) as e:
        load_profile(p)
    assert (e.value.path, e.value.key) == (str(p), key), str(e.value)
    assert str(e.value).startswith(f"{p}: {key}: {reason}") and "\n" not in str(e.value)


def test_not_a_profile_file(tmp_path: Path):
    with pytest.raises(DataFileError, match="cannot read"):
        load_profile(tmp_path / "missing.yaml")
    p = tmp_path / "list.yaml"
    p.write_text("- 1\n")
    with pytest.raises(DataFileError, match="expected a mapping at the top level"):
        load_profile(p)


# -- the golden file ------------------------------------------------------------------------------------------
def test_deploy_writes_the_golden_profile(tmp_path: Path):
    out = tmp_path / "profile.yaml"
    r = CliRunner().invoke(app, ["deploy", str(FA_TABLE), "--workload", "decode_4k", "--vllm", "0.20.0",
                                 "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert out.read_bytes() == GOLDEN.read_bytes()


def test_the_golden_profile_loads_as_what_it_says():
    p = load_profile(GOLDEN)
    assert p.match == MATCH
    assert p.at_build == () and p.global_ == (("cuda_graphs", True), ("prefill_backend", "auto"))
    rule = p.rule("max_num_splits")
    assert [(q.tokens, q.value) for q in rule.points] == [(1, 32), (8, 32), (32, 32), (64, 32), (128, 32),
                                                          (256, 1)]
    assert rule.select(200).value == 1 and rule.select(150).value == 32
    assert p.rule("num_kv_splits") is None
    assert yaml.safe_load(GOLDEN.read_text())["provenance"]["traffic"] == "workload decode_4k"
