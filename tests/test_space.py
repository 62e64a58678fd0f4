"""Search spaces: the shipped files load, relevance follows vLLM's code paths, every YAML error names file and key."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from mla_tune import batch_spec
from mla_tune.data import search_spaces_dir
from mla_tune.errors import DataFileError, UnknownNameError
from mla_tune.space import BACKENDS, load_space, load_space_file


def shape(spec):
    return batch_spec.parse(spec)


@pytest.mark.parametrize("backend", BACKENDS)
def test_shipped_spaces_load_and_put_the_default_first(backend):
    space = load_space(backend)
    for spec in ("64q1s4k", "32q4s4k", "q2ks8k_32q1s4k", "q4k"):
        configs = space.expand(shape(spec))
        assert configs[0] == space.default_config(shape(spec))
        assert len({tuple(sorted(c.items())) for c in configs}) == len(configs)


def test_decode_batches_do_not_ask_for_prefill_or_threshold():
    space = load_space("FLASHMLA")
    configs = space.expand(shape("64q1s4k"))
    assert {c["prefill_backend"] for c in configs} == {"auto"}
    assert {c["reorder_batch_threshold"] for c in configs} == {128}
    assert {c["cuda_graphs"] for c in configs} == {False, True}


def test_flash_attn_prefill_choice_matters_for_decode_too():
    space = load_space("FLASH_ATTN_MLA")
    configs = space.expand(shape("64q1s4k"))
    assert {c["prefill_backend"] for c in configs} == set(space["prefill_backend"].values())


def test_split_cap_only_under_graphs_and_graphs_only_for_small_uniform_decode():
    space = load_space("FLASH_ATTN_MLA")
    for c in space.expand(shape("64q1s4k")):
        assert c["cuda_graphs"] or c["max_num_splits"] == 32
    assert {c["cuda_graphs"] for c in space.expand(shape("1024q1s1k"))} == {False}  # over 512 tokens
    assert {c["cuda_graphs"] for c in space.expand(shape("q2ks8k_32q1s4k"))} == {False}  # mixed


def test_thresholds_that_split_a_batch_alike_collapse_to_one():
    space = load_space("FLASH_ATTN_MLA")
    thresholds = {c["reorder_batch_threshold"] for c in space.expand(shape("32q4s4k"))}
    assert thresholds == {2, 512}  # {1, 2} send q_len 4 to prefill, {4 .. 512} to decode


def test_cutlass_graphs_only_for_single_token_decode():
    space = load_space("CUTLASS_MLA")
    assert {c["cuda_graphs"] for c in space.expand(shape("32q4s4k"))} == {False}
    assert {c["cuda_graphs"] for c in space.expand(shape("32q1s4k"))} == {False, True}


def test_restrict_keeps_the_default():
    space = load_space("FLASHMLA").restrict("prefill_backend", ["fa2"])
    assert space["prefill_backend"].values() == ("auto", "fa2")


def test_unknown_backend_lists_the_valid_ones():
    with pytest.raises(UnknownNameError, match="FLASH_ATTN_MLA"):
        load_space("FLASH_MLA")


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
        load_space_file(path)
    assert e.value.path == str(path) and e.value.key == key and reason in e.value.reason
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_default_comes_from_the_knob(tmp_path):
    path = write_variant(tmp_path, lambda d: d["parameters"]["max_num_splits"].pop("default"))
    assert load_space_file(path)["max_num_splits"].default == 32


def test_broken_yaml_names_the_line(tmp_path):
    path = tmp_path / "FLASHMLA.yaml"
    path.write_text("schema_version: 1\nbackend: [FLASHMLA\n")
    with pytest.raises(DataFileError, match="line"):
        load_space_file(path)


def test_directory_override(tmp_path, monkeypatch):
    shutil.copytree(search_spaces_dir(), tmp_path / "ss")
    monkeypatch.setenv("MLA_TUNE_SEARCH_SPACES", str(tmp_path / "ss"))
    (tmp_path / "ss" / "FLASHMLA.yaml").write_text("schema_version: 1\nbackend: TRITON_MLA\nparameters: {}\n")
    with pytest.raises(DataFileError, match="file name says FLASHMLA"):
        load_space("FLASHMLA")


def test_split_cap_is_not_searched_under_fa2():
    space = load_space("FLASH_ATTN_MLA")
    fa2 = [c for c in space.expand(shape("64q1s4k")) if c["prefill_backend"] == "fa2"]
    assert {c["max_num_splits"] for c in fa2} == {32} and len(fa2) == 2
