"""Stored-result records: a study name is parsed and written in one place, and round-trips."""

from __future__ import annotations

import pytest

from mla_tune.records import StudyName


@pytest.mark.parametrize("text, record", [
    ("H100/deepseek-v3-tp1/FLASH_ATTN_MLA/64q1s4k", StudyName("H100", "deepseek-v3-tp1", "FLASH_ATTN_MLA", "64q1s4k")),
    ("H100-replay/deepseek-v3-tp8-kvfp8/FLASHMLA/mix:decode_1k",
     StudyName("H100-replay", "deepseek-v3-tp8-kvfp8", "FLASHMLA", "mix:decode_1k")),
    ("B200/org/model-tp2/TRITON_MLA/8q1s1k", StudyName("B200", "org/model-tp2", "TRITON_MLA", "8q1s1k")),
])
def test_parse_and_str_round_trip(text, record):
    assert StudyName.parse(text) == record
    assert str(record) == text


@pytest.mark.parametrize("text", ["", "H100", "H100/deepseek-v3-tp1/FLASH_ATTN_MLA", "H100//FLASHMLA/8q1s1k"])
def test_what_is_not_a_study_name_is_refused_naming_it(text):
    with pytest.raises(ValueError, match="not an mla-tune study name"):
        StudyName.parse(text)
