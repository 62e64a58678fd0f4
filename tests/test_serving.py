"""A table's params as vLLM 0.20 serving settings: pure mapping, and ``mla-tune flags`` on a committed H100 table."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from typer.testing import CliRunner

from mla_tune.cli import app
from mla_tune.serving import serving_settings

ROOT = Path(__file__).resolve().parents[1]
FA_DEFAULT = {"cuda_graphs": True, "max_num_splits": 32, "prefill_backend": "auto", "reorder_batch_threshold": 512}


def test_flash_attn_split_cap_and_prefill_become_attention_config():
    s = serving_settings("FLASH_ATTN_MLA", FA_DEFAULT | {"max_num_splits": 1, "prefill_backend": "fa2"}, FA_DEFAULT)
    assert s.attention_config == {"backend": "FLASH_ATTN_MLA", "flash_attn_max_num_splits_for_cuda_graph": 1,
                                  "flash_attn_version": 2, "disable_flashinfer_prefill": True,
                                  "use_cudnn_prefill": False, "use_trtllm_ragged_deepseek_prefill": False}
    assert not s.compilation_config and not s.env and not s.not_exposed
    args = shlex.split(s.args())
    assert args[0] == "--attention-config" and json.loads(args[1]) == s.attention_config


def test_defaults_need_nothing_but_the_backend():
    assert serving_settings("FLASH_ATTN_MLA", FA_DEFAULT, FA_DEFAULT).args() == \
        "--attention-config '{\"backend\": \"FLASH_ATTN_MLA\"}'"


def test_graphs_off_cutlass_splits_and_what_vllm_does_not_expose():
    s = serving_settings("CUTLASS_MLA", {"cuda_graphs": False, "num_kv_splits": 4}, {"cuda_graphs": True})
    assert s.compilation_config == {"cudagraph_mode": "PIECEWISE"} and s.env == {"FORCE_NUM_KV_SPLITS": "4"}
    assert s.args().startswith("FORCE_NUM_KV_SPLITS=4 --attention-config")
    t = serving_settings("TRITON_MLA", {"num_kv_splits": 2, "prefill_backend": "auto"}, {"num_kv_splits": "auto",
                                                                                         "prefill_backend": "auto"})
    assert t.not_exposed == ("num_kv_splits=2",)
    r = serving_settings("FLASHMLA", {"reorder_batch_threshold": 128}, {"reorder_batch_threshold": 512})
    assert r.not_exposed == ("reorder_batch_threshold=128",)


def test_flags_prints_each_entry_of_a_measured_table():
    table = ROOT / "results/h100/tables/FLASH_ATTN_MLA-deepseek-v3-tp1.yaml"
    r = CliRunner().invoke(app, ["flags", str(table)])
    assert r.exit_code == 0, r.output
    [line] = [x for x in r.output.splitlines() if x.startswith("256q1s4k ")]
    assert "x1.105 [1.077, 1.134]" in line and '"flash_attn_max_num_splits_for_cuda_graph": 1' in line
    r = CliRunner().invoke(app, ["flags", str(ROOT / "results/h100/tables/TRITON_MLA-deepseek-v3-tp1.yaml"),
                                 "--shape", "256q1s4k"])
    assert r.exit_code == 0 and "not settable in vLLM 0.20 (needs a patch): num_kv_splits=1" in r.output
    r = CliRunner().invoke(app, ["flags", str(table), "--shape", "7q"])
    assert r.exit_code == 2 and "unknown shape '7q'; valid:" in r.output and "256q1s4k" in r.output
