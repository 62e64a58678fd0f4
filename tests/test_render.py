"""The terminal rendering of stored studies: confirmations with a noise floor, and those stored before it."""

from __future__ import annotations

from pathlib import Path

from mla_tune import api
from mla_tune.tables.summary import StudySummary
from mla_tune.views.render import study_rows

ROOT = Path(__file__).resolve().parent.parent


def test_confirmations_stored_before_the_noise_floor_still_render():
    summaries = api.find_studies(storage=str(ROOT / "results/h200/run1/studies.journal"))
    rows = {r[0]: r for r in study_rows(summaries)}
    assert len(rows) == 12 and {r[7] for r in rows.values()} == {"not measured"}
    assert rows["H200/deepseek-v3-tp1/FLASH_ATTN_MLA/64q1s4k"][5] == "x1.055 [1.050, 1.060]"
    assert rows["H200/deepseek-v3-tp1/FLASH_ATTN_MLA/8q1s4k"][5] == "default kept"


def test_a_study_not_confirmed_has_no_floor_to_show():
    s = StudySummary("H100/deepseek-v3-tp1/FLASH_ATTN_MLA/64q1s4k", {}, 3, 0, 0, None, 0.1, {}, 1, None)
    assert study_rows([s])[0][5:] == ["not confirmed", "-", "-"]
