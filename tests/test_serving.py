"""A table's params as vLLM serving settings per vLLM family: pure mapping, and ``mla-tune flags`` on H100 tables."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from typer.testing import CliRunner

from mla_tune.cli import app
from mla_tune.serving import serving_settings
from mla_tune.vllm_adapters import adapter_for

ROOT = Path(__file__).resolve().parents[1]
FA_DEFAULT = {"cuda_graphs": True, "max_num_splits": 32, "prefill_backend": "auto", "reorder_batch_threshold": 512}
V20, V26 = adapter_for("0.20.0"), adapter_for("0.26.0")


def test_flash_attn_split_cap_and_prefill_become_attention_config():
    s = serving_settings("FLASH_ATTN_MLA", FA_DEFAULT | {"max_num_splits": 1, "prefill_backend": "fa2"}, FA_DEFAULT,
                         V20)
    assert s.attention_config == {"backend": "FLASH_ATTN_MLA", "flash_attn_max_num_splits_for_cuda_graph": 1,
                                  "flash_attn_version": 2, "disable_flashinfer_prefill": True,
                                  "use_cudnn_prefill": False, "use_trtllm_ragged_deepseek_prefill": False}
    assert not s.compilation_config and not s.env and not s.plugin_only and not s.missing
    args = shlex.split(s.args())
    assert args[0] == "--attention-config" and json.loads(args[1]) == s.attention_config


def test_prefill_follows_the_vllm_version():
    s = serving_settings("FLASH_ATTN_MLA", FA_DEFAULT | {"prefill_backend": "fa2"}, FA_DEFAULT, V26)
    assert s.attention_config == {"backend": "FLASH_ATTN_MLA", "mla_prefill_backend": "FLASH_ATTN",
                                  "flash_attn_version": 2}
    assert "use_cudnn_prefill" not in json.dumps(s.attention_config)  # removed in 0.22: vLLM would reject it
    cudnn = serving_settings("FLASHMLA", {"prefill_backend": "cudnn"}, {"prefill_backend": "auto"}, V26)
    assert cudnn.missing == ("prefill_backend=cudnn",)
    assert serving_settings("FLASHMLA", {"prefill_backend": "cudnn"}, {"prefill_backend": "auto"},
                            V20).attention_config["use_cudnn_prefill"] is True


def test_defaults_need_nothing_but_the_backend():
    assert serving_settings("FLASH_ATTN_MLA", FA_DEFAULT, FA_DEFAULT, V20).args() == \
        "--attention-config '{\"backend\": \"FLASH_ATTN_MLA\"}'"


def test_graphs_off_cutlass_splits_and_what_only_the_plugin_applies():
    s = serving_settings("CUTLASS_MLA", {"cuda_graphs": False, "num_kv_splits": 4}, {"cuda_graphs": True}, V20)
    assert s.compilation_config == {"cudagraph_mode": "PIECEWISE"} and s.env == {"FORCE_NUM_KV_SPLITS": "4"}
    assert s.args().startswith("FORCE_NUM_KV_SPLITS=4 --attention-config")
    t = serving_settings("TRITON_MLA", {"num_kv_splits": 2, "prefill_backend": "auto"},
                         {"num_kv_splits": "auto", "prefill_backend": "auto"}, V20)
    assert t.plugin_only == ("num_kv_splits=2",)
    r = serving_settings("FLASHMLA", {"reorder_batch_threshold": 64}, {"reorder_batch_threshold": 128}, V26)
    assert r.plugin_only == ("reorder_batch_threshold=64",)


def test_flags_prints_each_entry_with_the_cost_of_a_global_value():
    table = ROOT / "results/h100/tables/FLASH_ATTN_MLA-deepseek-v3-tp1.yaml"
    r = CliRunner().invoke(app, ["flags", str(table), "--vllm", "0.20.0"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    i = next(i for i, x in enumerate(lines) if x.startswith("256q1s4k "))
    assert "x1.105 [1.077, 1.134]" in lines[i] and '"flash_attn_max_num_splits_for_cuda_graph": 1' in lines[i]
    # the same cap as a global flag: its measured cost on another shape, and the per-batch alternative
    assert "as a global flag max_num_splits=1 costs 8q4s4k x0.755" in lines[i + 1]
    assert "mla-tune deploy" in lines[i + 1]
    r = CliRunner().invoke(app, ["flags", str(ROOT / "results/h100/tables/TRITON_MLA-deepseek-v3-tp1.yaml"),
                                 "--shape", "256q1s4k", "--vllm", "0.20"])
    assert r.exit_code == 0 and "the mla-tune plugin applies them" in r.output and "num_kv_splits=1" in r.output
    r = CliRunner().invoke(app, ["flags", str(table), "--shape", "7q"])
    assert r.exit_code == 2 and "unknown shape '7q'; valid:" in r.output and "256q1s4k" in r.output
    r = CliRunner().invoke(app, ["flags", str(table), "--vllm", "0.29.0"])
    assert r.exit_code == 2 and "not supported" in r.output and "0.22.x-0.25.x, 0.26.x" in r.output
