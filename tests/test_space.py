"""Search spaces: the shipped files load, relevance follows vLLM's code paths, every YAML error names file and key."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from mla_tune import batch_spec
from mla_tune.data import search_spaces_dir
from mla_tune.errors import DataFileError, UnknownNameError
from mla_tune.space import BACKENDS, CUDA_GRAPH_SUPPORT, load_space, load_space_file
from mla_tune.vllm_adapters import FAMILIES, adapter_for

V20 = adapter_for("0.20.0")


def shape(spec):
    return batch_spec.parse(spec)


@pytest.mark.parametrize("backend", BACKENDS)
def test_shipped_spaces_load_and_put_the_default_first(backend):
    space = V20.search_space(backend)
    for spec in ("64q1s4k", "32q4s4k", "q2ks8k_32q1s4k", "q4k"):
        configs = space.expand(shape(spec))
        assert configs[0] == space.default_config(shape(spec))
        assert len({tuple(sorted(c.items())) for c in configs}) == len(configs)


def test_decode_batches_do_not_ask_for_prefill_or_threshold():
    space = V20.search_space("FLASHMLA")
    configs = space.expand(shape("64q1s4k"))
    assert {c["prefill_backend"] for c in configs} == {"auto"}
    assert {c["reorder_batch_threshold"] for c in configs} == {128}
    assert {c["cuda_graphs"] for c in configs} == {False, True}


def test_flash_attn_prefill_choice_matters_for_decode_too():
    space = V20.search_space("FLASH_ATTN_MLA")
    configs = space.expand(shape("64q1s4k"))
    assert {c["prefill_backend"] for c in configs} == set(space["prefill_backend"].values())


def test_split_cap_only_under_graphs_and_graphs_only_for_small_uniform_decode():
    space = V20.search_space("FLASH_ATTN_MLA")
    for c in space.expand(shape("64q1s4k")):
        assert c["cuda_graphs"] or c["max_num_splits"] == 32
    assert {c["cuda_graphs"] for c in space.expand(shape("1024q1s1k"))} == {False}  # over 512 tokens
    assert {c["cuda_graphs"] for c in space.expand(shape("q2ks8k_32q1s4k"))} == {False}  # mixed


def test_thresholds_that_split_a_batch_alike_collapse_to_one():
    space = V20.search_space("FLASH_ATTN_MLA")
    thresholds = {c["reorder_batch_threshold"] for c in space.expand(shape("32q4s4k"))}
    assert thresholds == {2, 512}  # {1, 2} send q_len 4 to prefill, {4 .. 512} to decode


def test_cutlass_graphs_only_for_single_token_decode():
    space = V20.search_space("CUTLASS_MLA")
    assert {c["cuda_graphs"] for c in space.expand(shape("32q4s4k"))} == {False}
    assert {c["cuda_graphs"] for c in space.expand(shape("32q1s4k"))} == {False, True}


def test_restrict_keeps_the_default():
    space = V20.search_space("FLASHMLA").restrict("prefill_backend", ["fa2"])
    assert space["prefill_backend"].values() == ("auto", "fa2")


def test_unknown_backend_lists_the_valid_ones():
    with pytest.raises(UnknownNameError, match="FLASH_ATTN_MLA"):
        load_space("FLASH_MLA", "never")


def write_variant(tmp_path: Path, edit) -> Path:
    data = yaml.safe_load((search_spaces_dir() / "FLASH_ATTN_MLA.yaml").read_text())
    edit(data)
    path = tmp_path / "FLASH_ATTN_MLA.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


BAD = {
    "unknown key": (lambda d: d.update(color="red"), "color", "unknown key"),
    "schema version": (lambda d: d.update(schema_version=2), "schema_version", "reads schema_version 1"),
    "unknown parameter": (lambda d: d["parameters"].update(num_splits={"type": "int", "default": 1}),
                          "parameters.num_splits", "unknown parameter"),
    "wrong backend": (lambda d: d["parameters"].update(num_kv_splits={"type": "categorical", "choices": [1],
                                                                      "default": 1}),
                      "parameters.num_kv_splits", "does not apply to FLASH_ATTN_MLA"),
    "default changed": (lambda d: d["parameters"]["max_num_splits"].update(default=3),
                        "parameters.max_num_splits.default", "vLLM's default for FLASH_ATTN_MLA is 32"),
    "default outside": (lambda d: d["parameters"]["max_num_splits"].update(choices=[1, 2]),
                        "parameters.max_num_splits.default", "outside"),
    "wrong type for knob": (lambda d: d["parameters"]["max_num_splits"].update(type="bool", choices=None),
                            "parameters.max_num_splits.type", "declared 'int'"),
    "value outside knob": (lambda d: d["parameters"]["max_num_splits"].update(choices=[0, 32]),
                           "parameters.max_num_splits.choices", "not a value of max_num_splits"),
    "bad range": (lambda d: d["parameters"].update(max_num_splits={"type": "int", "low": 8, "high": 2,
                                                                   "default": 32}),
                  "parameters.max_num_splits", "bad range"),
    "bad type": (lambda d: d["parameters"]["cuda_graphs"].update(type="float"), "parameters.cuda_graphs.type",
                 "allowed"),
    "unknown prefill": (lambda d: d["parameters"]["prefill_backend"]["choices"].append("xformers"),
                        "parameters.prefill_backend.choices", "xformers"),
    "bool choices": (lambda d: d["parameters"]["cuda_graphs"].update(choices=[True]), "parameters.cuda_graphs",
                     "no choices"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_invalid_space_files_name_file_and_key(tmp_path, case):
    edit, key, reason = BAD[case]
    path = write_variant(tmp_path, edit)
    with pytest.raises(DataFileError) as e:
        load_space_file(path, "uniform_batch")
    assert e.value.path == str(path) and e.value.key == key and reason in e.value.reason
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_default_comes_from_the_knob(tmp_path):
    path = write_variant(tmp_path, lambda d: d["parameters"]["max_num_splits"].pop("default"))
    assert load_space_file(path, "uniform_batch")["max_num_splits"].default == 32


def test_broken_yaml_names_the_line(tmp_path):
    path = tmp_path / "FLASHMLA.yaml"
    path.write_text("schema_version: 1\nbackend: [FLASHMLA\n")
    with pytest.raises(DataFileError, match="line"):
        load_space_file(path, "uniform_batch")


def test_directory_override(tmp_path, monkeypatch):
    shutil.copytree(search_spaces_dir(), tmp_path / "ss")
    monkeypatch.setenv("MLA_TUNE_SEARCH_SPACES", str(tmp_path / "ss"))
    (tmp_path / "ss" / "FLASHMLA.yaml").write_text("schema_version: 1\nbackend: TRITON_MLA\nparameters: {}\n")
    with pytest.raises(DataFileError, match="file name says FLASHMLA"):
        load_space("FLASHMLA", "uniform_batch")


def test_split_cap_is_not_searched_under_fa2():
    space = V20.search_space("FLASH_ATTN_MLA")
    fa2 = [c for c in space.expand(shape("64q1s4k")) if c["prefill_backend"] == "fa2"]
    assert {c["max_num_splits"] for c in fa2} == {32} and len(fa2) == 2


def test_graph_support_is_no_line_of_a_space_file(tmp_path):
    path = write_variant(tmp_path, lambda d: d.update(cuda_graph_support="uniform_batch"))
    with pytest.raises(DataFileError) as e:
        load_space_file(path, "uniform_batch")
    assert e.value.key == "cuda_graph_support" and "fact of each vLLM family" in e.value.reason


@pytest.mark.parametrize(("version", "graphs"), [("0.20.0", False), ("0.21.0", False), ("0.22.0", True),
                                                 ("0.25.1", True), ("0.26.0", True), ("0.33.0", True)])
def test_triton_graphs_are_searched_where_the_family_graphs_it(version, graphs):
    space = adapter_for(version).search_space("TRITON_MLA")
    assert ("cuda_graphs" in space) is graphs
    configs = space.expand(shape("64q1s4k"))
    if graphs:  # both arms of the single-token decode batch: vLLM's graphed default first
        assert {c["cuda_graphs"] for c in configs} == {True, False} and configs[0]["cuda_graphs"] is True
    else:  # no parameter at all: configs are what the 0.20 recordings hold
        assert all("cuda_graphs" not in c for c in configs)
    # a prefill batch is never graphed, whatever the family
    assert {c.get("cuda_graphs", False) for c in space.expand(shape("q4k"))} == {False}


def test_graphs_follow_the_family_level():
    # 0.22 graphs TRITON's uniform batches of any q_len up to the threshold; 0.26 single-token ones only; the
    # threshold is 1 on TRITON, so both graph the same batches here; the level itself is the family's
    assert adapter_for("0.22.0").search_space("TRITON_MLA").cuda_graph_support == "uniform_batch"
    assert adapter_for("0.26.0").search_space("TRITON_MLA").cuda_graph_support == "uniform_single_token_decode"
    # under_graphs round-trips: dropping the parameter and bringing it back gives the same space
    s22 = adapter_for("0.22.0").search_space("TRITON_MLA")
    assert s22.under_graphs("never").under_graphs("uniform_batch") == s22
    assert s22.under_graphs("never").names == ("prefill_backend", "num_kv_splits")
    with pytest.raises(ValueError, match="unknown CUDA graph support"):
        s22.under_graphs("sometimes")


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_backend_some_family_graphs_declares_cuda_graphs(backend):
    """Else a family that graphs it would be measured eagerly where it serves from graphs."""
    levels = {a.graph_support(backend) for a in FAMILIES}
    assert levels <= set(CUDA_GRAPH_SUPPORT)
    if levels != {"never"}:
        assert "cuda_graphs" in load_space(backend, "always")
