"""``deploy``: synthetic tuning tables + traffic -> a serving profile; the ``mla-tune deploy`` command."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mla_tune import api
from mla_tune.cli import app
from mla_tune.errors import UsageError
from mla_tune.serving import Match, PerBatchRule, Point, deploy, load_profile
from mla_tune.serving.deploy import PointCost
from mla_tune.tables.export import dump_yaml, write_table
from mla_tune.tables.table import TABLE_KIND
from mla_tune.traffic import Traffic

H100 = {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "sm_count": 132}
FA = {"cuda_graphs": True, "max_num_splits": 32, "prefill_backend": "auto", "reorder_batch_threshold": 512}
FLASHMLA = {"cuda_graphs": True, "prefill_backend": "auto", "reorder_batch_threshold": 128}
TRITON = {"num_kv_splits": "auto", "prefill_backend": "auto"}


def entry(shape: str, default: dict, measured: list[tuple[dict, float]], best: dict | None = None) -> dict:
    """A table entry: ``measured`` are (changes to the default, ms); ``best`` the tuned changes (None: kept)."""
    landscape = [{"params": {**default, **changes}, "trial_ms": ms} for changes, ms in measured]
    lat = {tuple(sorted(p["params"].items())): p["trial_ms"] for p in landscape}
    params = {**default, **(best or {})}
    ms = {"default": lat[tuple(sorted(default.items()))], "best": lat[tuple(sorted(params.items()))]}
    return {"shape": shape, "tuned": best is not None, "trials": {"measured": len(measured)}, "params": params,
            "default_params": dict(default), "latency_ms": ms, "speedup": round(ms["default"] / ms["best"], 4),
            "landscape": landscape}


def table(backend: str, entries: list[dict], gpu: dict = H100, runner: str = "vllm", heads: int = 128,
          kv: str = "auto") -> dict:
    return {"kind": TABLE_KIND, "schema_version": 1, "backend": backend, "block_size": 64, "kv_cache_dtype": kv,
            "objective": "per-shape", "workloads": ["test"],
            "model": {"model": "deepseek-v3", "tp": 128 // heads, "num_q_heads": heads, "kv_lora_rank": 512,
                      "qk_rope_head_dim": 64},
            "provenance": {"runner": runner, "gpu": dict(gpu), "vllm": "0.20.0", "mla_tune": "0.1.0"},
            "entries": entries}


def traffic(**weights: float) -> Traffic:
    return Traffic(tuple((k.removeprefix("_"), float(v)) for k, v in weights.items()), "test traffic")


def fa_table() -> dict:
    """Small decode batches keep the split cap, 256 tokens is faster with cap 1 (as measured on H100)."""
    return table("FLASH_ATTN_MLA", [
        entry("8q1s4k", FA, [({}, 0.036), ({"max_num_splits": 1}, 0.090), ({"cuda_graphs": False}, 0.080)]),
        entry("64q1s4k", FA, [({}, 0.145), ({"max_num_splits": 1}, 0.160), ({"cuda_graphs": False}, 0.200)]),
        entry("256q1s4k", FA, [({}, 0.560), ({"max_num_splits": 1}, 0.511), ({"cuda_graphs": False}, 0.700)],
              best={"max_num_splits": 1}),
    ])


# -- per-batch rules ------------------------------------------------------------------------------------------
def test_split_cap_per_batch_small_batches_keep_the_default():
    d = deploy([fa_table()], vllm="0.20.0")
    p = d.profile
    assert p.match == Match("H100", "9.0", "FLASH_ATTN_MLA", 128, 512, 64, "auto", "0.20")
    assert p.per_batch == (PerBatchRule("max_num_splits", (Point(8, 32, None, "8q1s4k"),
                                                            Point(64, 32, None, "64q1s4k"),
                                                            Point(256, 1, None, "256q1s4k"))),)
    assert p.rule("max_num_splits").select(200).value == 1 and p.rule("max_num_splits").select(100).value == 32
    assert p.at_build == () and dict(p.global_) == {"cuda_graphs": True, "prefill_backend": "auto"}
    assert d.unmeasured == () and d.skipped == ()
    assert d.settings.attention_config == {"backend": "FLASH_ATTN_MLA"}  # nothing global changes
    assert p.provenance["traffic"] == "every table shape, weighted alike"
    assert p.provenance["measured_with"] == ["0.20.0 on NVIDIA H100 80GB HBM3"]


def test_no_rule_where_every_batch_keeps_the_default():
    t = fa_table()
    t["entries"] = t["entries"][:2]
    assert deploy([t], vllm="0.20.0").profile.per_batch == ()


def test_shapes_of_one_token_count_share_a_point_chosen_by_traffic():
    # 64 decode tokens twice: 64q1s4k keeps cap 32, 32q2s4k wants cap 1; the heavier shape decides
    t = fa_table()
    t["entries"].append(entry("32q2s4k", FA, [({}, 0.131), ({"max_num_splits": 1}, 0.100)],
                              best={"max_num_splits": 1}))
    rule = deploy([t], traffic(_64q1s4k=1, _32q2s4k=10), "0.20.0").profile.rule("max_num_splits")
    assert rule.select(64) == Point(64, 1, None, "64q1s4k+32q2s4k")
    rule = deploy([t], traffic(_64q1s4k=10, _32q2s4k=1), "0.20.0").profile.rule("max_num_splits")
    assert rule.select(64).value == 32


def triton_table() -> dict:
    return table("TRITON_MLA", [
        entry("8q1s1k", TRITON, [({}, 0.10), ({"num_kv_splits": 4}, 0.08), ({"num_kv_splits": 16}, 0.12)],
              best={"num_kv_splits": 4}),
        entry("8q1s16k", TRITON, [({}, 0.50), ({"num_kv_splits": 4}, 0.60), ({"num_kv_splits": 16}, 0.40)],
              best={"num_kv_splits": 16}),
    ])


def test_eager_triton_points_follow_the_context_graphed_triton_does_not():
    rule = deploy([triton_table()], vllm="0.20.0").profile.rule("num_kv_splits")  # TRITON never graphed
    assert rule.points == (Point(8, 4, 1024, "8q1s1k"), Point(8, 16, 16384, "8q1s16k"))
    assert rule.select(8, 2048).value == 4 and rule.select(8, 12000).value == 16
    # 0.26 captures TRITON in full graphs: one value per batch size, the best over both contexts
    rule = deploy([triton_table()], vllm="0.26.0").profile.rule("num_kv_splits")
    assert rule.points == (Point(8, 16, None, "8q1s1k+8q1s16k"),)  # 0.52 ms in all vs 0.60 (auto), 0.68 (4)
    assert deploy([triton_table()], traffic(_8q1s1k=20, _8q1s16k=1), "0.26.0"
                  ).profile.rule("num_kv_splits").points[0].value == 4


def test_a_per_batch_value_says_what_it_costs_the_other_contexts_of_its_batch(tmp_path: Path):
    """Under CUDA graphs one value serves every context of a batch size: where a context's own best differs, its
    cost there is printed, from the table's own entries (as the global knobs' cost lines are)."""
    t = table("FLASH_ATTN_MLA", [
        entry("8q1s1k", FA, [({}, 0.030), ({"max_num_splits": 1}, 0.027)], best={"max_num_splits": 1}),
        entry("8q1s16k", FA, [({}, 0.100), ({"max_num_splits": 1}, 0.110)]),
    ])
    d = deploy([t], traffic(_8q1s1k=10, _8q1s16k=1), "0.20.0")  # cap 1: 0.38 in all, vLLM's 32: 0.40
    assert d.profile.rule("max_num_splits").points == (Point(8, 1, None, "8q1s1k+8q1s16k"),)
    assert d.point_costs == (PointCost("max_num_splits", 8, 1, "8q1s16k", 1.0, 0.110, 0.100),)
    flow = tmp_path / "t.csv"
    flow.write_text("spec,weight\n8q1s1k,10\n8q1s16k,1\n")
    r = CliRunner().invoke(app, ["deploy", str(write_table(t, tmp_path / "t.yaml")), "-o", str(tmp_path / "p.yaml"),
                                 "--traffic", str(flow), "--vllm", "0.20.0"])
    lines = r.output.splitlines()
    at = lines.index("  per batch  max_num_splits: 8 -> 1  (decode tokens; nearest measured)")
    assert lines[at + 1] == "             8 -> 1 on the other shapes of that batch: 8q1s16k x0.909 vs each one's own best"
    assert deploy([triton_table()], vllm="0.20.0").point_costs == ()  # eager: a point per context, no other


# -- global knobs -------------------------------------------------------------------------------------------
def graphs_table(small_eager_measured: bool = True) -> dict:
    """FLASHMLA: 8q1s4k runs faster eager, 64q1s4k faster graphed; cuda_graphs has one value per deployment."""
    small = [({}, 0.10), ({"cuda_graphs": False}, 0.08)]
    large = [({}, 0.20), ({"cuda_graphs": False}, 0.30)] if small_eager_measured else [({}, 0.20)]
    return table("FLASHMLA", [entry("8q1s4k", FLASHMLA, small, best={"cuda_graphs": False}),
                              entry("64q1s4k", FLASHMLA, large)])


def _choice(d, name: str):
    return next(g for g in d.globals_ if g.knob == name)


def test_global_value_where_the_traffic_makes_the_non_default_win():
    d = deploy([graphs_table()], traffic(_8q1s4k=10, _64q1s4k=1), "0.20.0")
    g = _choice(d, "cuda_graphs")
    assert (g.value, g.default) == (False, True)  # 10 x 0.08 + 0.30 = 1.10 < 10 x 0.10 + 0.20 = 1.20
    assert g.rejected == ((True, "weighted 1.091x the chosen value's latency"),)
    assert {c[0]: c[1] for c in g.costs} == {"8q1s4k": 10.0, "64q1s4k": 1.0}  # (shape, weight, ms, own best)
    assert g.costs[1] == ("64q1s4k", 1.0, 0.30, 0.20)
    assert dict(d.profile.global_)["cuda_graphs"] is False
    assert d.settings.compilation_config == {"cudagraph_mode": "PIECEWISE"}
    assert "--compilation-config" in d.settings.args()


def test_global_value_where_the_traffic_keeps_the_default():
    for flow in (traffic(_8q1s4k=1, _64q1s4k=10), None):  # None: every table shape alike (0.30 vs 0.38)
        d = deploy([graphs_table()], flow, "0.20.0")
        g = _choice(d, "cuda_graphs")
        assert g.value is True and g.rejected[0][0] is False
        assert g.rejected[0][1].startswith("weighted ") and d.settings.compilation_config == {}


def test_a_value_not_measured_on_a_weighted_shape_is_rejected_with_the_reason():
    d = deploy([graphs_table(small_eager_measured=False)], traffic(_8q1s4k=100, _64q1s4k=1), "0.20.0")
    g = _choice(d, "cuda_graphs")
    assert g.value is True
    assert g.rejected == ((False, "not measured on 64q1s4k"),)
    # with no traffic on the shape that lacks it, the value is priced on the rest
    d = deploy([graphs_table(small_eager_measured=False)], traffic(_8q1s4k=1), "0.20.0")
    assert _choice(d, "cuda_graphs").value is False


def test_a_global_knob_that_matters_nowhere_is_left_out():
    d = deploy([graphs_table()], vllm="0.20.0")
    # pure single-token decode: the threshold and the prefill kernel change nothing on FLASHMLA
    assert [g.knob for g in d.globals_] == ["cuda_graphs"]


def test_reorder_threshold_chosen_at_build():
    # 150q4s4k is 600 tokens: eager whatever the threshold, so only the threshold differs between the configs
    t = table("FLASHMLA", [entry("150q4s4k", {**FLASHMLA, "cuda_graphs": False},
                                 [({}, 1.0), ({"reorder_batch_threshold": 2}, 0.8)],
                                 best={"reorder_batch_threshold": 2})])
    d = deploy([t], vllm="0.20.0")
    assert d.profile.at_build == (("reorder_batch_threshold", 2),)
    assert "reorder_batch_threshold" not in dict(d.profile.global_)
    assert d.settings.plugin_only == ()  # the plugin applies it from at_build; no vLLM flag exists


def threshold_table() -> dict:
    """FLASH_ATTN_MLA: threshold 128 sends the mixed batch's 512-token requests to the prefill pipeline (faster);
    on 8q1s4k and 8q4s4k (query lengths 1 and 4) 128 and vLLM's 512 split the batch alike."""
    return table("FLASH_ATTN_MLA", [
        entry("8q1s4k", FA, [({}, 0.036), ({"max_num_splits": 1}, 0.090)]),
        entry("8q4s4k", FA, [({}, 0.081), ({"max_num_splits": 1}, 0.100)]),
        entry("2q512s2k_16q1s2k", {**FA, "cuda_graphs": False}, [({}, 0.95), ({"reorder_batch_threshold": 128}, 0.73)],
              best={"reorder_batch_threshold": 128}),
    ])


def test_a_global_value_is_deployed_only_where_it_runs_a_shape_of_the_traffic_differently(tmp_path: Path):
    # pure decode and spec decode with 4 tokens: 128 changes nothing there, so vLLM's 512 stays, with why
    d = deploy([threshold_table()], traffic(_8q1s4k=50, _8q4s4k=50), "0.20.0")
    g = _choice(d, "reorder_batch_threshold")
    assert (g.value, g.default, g.costs) == (512, 512, ())
    assert g.rejected == ((128, "runs no shape of the traffic differently from vLLM's default (only "
                                "2q512s2k_16q1s2k, which carries no traffic)"),)
    assert d.profile.at_build == ()
    # with the mixed batch in the traffic 128 wins there, priced only where it runs differently
    d = deploy([threshold_table()], traffic(_8q4s4k=50, _2q512s2k_16q1s2k=1), "0.20.0")
    g = _choice(d, "reorder_batch_threshold")
    assert g.value == 128 and d.profile.at_build == (("reorder_batch_threshold", 128),)
    assert g.costs == (("2q512s2k_16q1s2k", 1.0, 0.73, 0.73),)  # not 8q4s4k, which 128 does not touch
    assert g.rejected == ((512, "weighted 1.301x the chosen value's latency"),)
    flow = tmp_path / "t.csv"
    flow.write_text("spec,weight\n8q1s4k,50\n8q4s4k,50\n")
    r = CliRunner().invoke(app, ["deploy", str(write_table(threshold_table(), tmp_path / "t.yaml")), "-o",
                                 str(tmp_path / "p.yaml"), "--traffic", str(flow), "--vllm", "0.20.0"])
    lines = r.output.splitlines()
    at = lines.index("  global     reorder_batch_threshold=512")
    assert lines[at + 1].startswith("             not reorder_batch_threshold=128: runs no shape of the traffic")
    assert not lines[at + 2].startswith("      ") and "at build" not in r.output


# -- what deploy refuses or reports ----------------------------------------------------------------------------
@pytest.mark.parametrize(("other", "why"), [
    ({"backend": "FLASHMLA"}, "backend FLASH_ATTN_MLA vs FLASHMLA"),
    ({"gpu": {**H100, "name": "NVIDIA H200"}}, "GPU NVIDIA H100 80GB HBM3 vs NVIDIA H200"),
    ({"gpu": {**H100, "compute_capability": "10.0"}}, "compute capability 9.0 vs 10.0"),
    ({"heads": 16}, "query heads per GPU 128 vs 16"),
    ({"kv": "fp8"}, "KV cache dtype auto vs fp8"),
])
def test_tables_of_different_engines_are_refused_naming_the_field(other: dict, why: str):
    backend = other.pop("backend", "FLASH_ATTN_MLA")
    second = table(backend, fa_table()["entries"], **other)
    with pytest.raises(UsageError) as e:
        deploy([fa_table(), fa_table(), second], vllm="0.20.0")
    assert str(e.value).startswith(f"the tables differ in {why} (table 1 vs table 3): a profile is for one engine")
    assert "\n" not in str(e.value) and "('" not in str(e.value)


@pytest.mark.parametrize("order", ["replay first", "replay second"])
def test_replay_tables_are_refused(order: str):
    replay = table("FLASH_ATTN_MLA", fa_table()["entries"], runner="replay")
    tables = [replay, fa_table()] if order == "replay first" else [fa_table(), replay]
    with pytest.raises(UsageError, match="a table from runner 'replay' is not a measurement of this GPU"):
        deploy(tables, vllm="0.20.0")


def test_traffic_shapes_not_in_the_tables_are_listed_as_unmeasured():
    d = deploy([fa_table()], traffic(_8q1s4k=1, _512q1s4k=5, _q4k=1), "0.20.0")
    assert d.unmeasured == ("512q1s4k", "q4k")
    assert d.profile.provenance["traffic"] == "test traffic"


def test_failed_and_mix_entries_are_skipped_with_why():
    t = fa_table()
    failed = copy.deepcopy(t["entries"][0]) | {"shape": "q64k", "error": "OOM"}
    mix = {"workload": "decode_4k", "tuned": False, "trials": {}, "params": [FA], "default_params": [FA]}
    t["entries"] += [failed, mix]
    d = deploy([t], vllm="0.20.0")
    assert d.skipped == ("q64k (fails on every config)",
                         "mix:decode_4k (a mix entry: tune per shape to deploy per batch)")
    t["entries"] = [failed]
    with pytest.raises(UsageError, match=r"no measured shape to deploy in the tables \(q64k"):
        deploy([t], vllm="0.20.0")
    with pytest.raises(UsageError, match="at least one table"):
        deploy([], vllm="0.20.0")


def test_unsupported_vllm_is_refused():
    with pytest.raises(UsageError, match="vLLM 0.29.0 is not supported"):
        deploy([fa_table()], vllm="0.29.0")
    assert deploy([fa_table()]).profile.match.vllm == "0.20"  # the tables' version


# -- the command --------------------------------------------------------------------------------------------------
def _table_file(tmp_path: Path) -> Path:
    return write_table(fa_table(), tmp_path / "fa.yaml")


def test_cli_writes_the_profile_and_says_how_to_serve(tmp_path: Path):
    out = tmp_path / "out" / "profile.yaml"
    r = CliRunner().invoke(app, ["deploy", str(_table_file(tmp_path)), "-o", str(out), "--vllm", "0.20.0"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert "  per batch  max_num_splits: 8 -> 32, 64 -> 32, 256 -> 1  (decode tokens; nearest measured)" in lines
    assert lines[-2] == f"wrote {out}"
    assert lines[-1] == (f"serve with: MLA_TUNE_PROFILE={out} vllm serve MODEL "
                         "--attention-config '{\"backend\": \"FLASH_ATTN_MLA\"}'")
    assert load_profile(out) == deploy([fa_table()], vllm="0.20.0").profile
    assert sorted(x.name for x in out.parent.iterdir()) == ["profile.yaml"]  # no temporary file left


def test_cli_with_a_traffic_file(tmp_path: Path):
    flow = tmp_path / "traffic.csv"
    flow.write_text("spec,weight\n256q1s4k,5\n1024q1s4k,1\n")
    out = tmp_path / "p.yaml"
    r = CliRunner().invoke(app, ["deploy", str(_table_file(tmp_path)), "-o", str(out), "--traffic", str(flow),
                                 "--vllm", "0.20"])
    assert r.exit_code == 0, r.output
    assert f"traffic: {flow}" in r.output and "not measured (vLLM's defaults serve them): 1024q1s4k" in r.output


def test_the_profile_is_written_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    out = tmp_path / "profile.yaml"
    out.write_text("the old profile\n")
    tables = [_table_file(tmp_path)]

    def fail(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError):
        api.deploy_profile(tables, out, vllm="0.20.0")
    assert out.read_text() == "the old profile\n"  # readers never see half a profile
    assert sorted(x.name for x in tmp_path.iterdir()) == ["fa.yaml", "profile.yaml"]


def test_cli_refuses_traffic_and_workload_together(tmp_path: Path):
    flow = tmp_path / "t.csv"
    flow.write_text("spec,weight\nq1s4k,1\n")
    out = tmp_path / "p.yaml"
    r = CliRunner().invoke(app, ["deploy", str(_table_file(tmp_path)), "-o", str(out), "--traffic", str(flow),
                                 "--workload", "decode_4k"])
    assert r.exit_code == 2
    assert "give --traffic or --workload, not both" in r.output and "Traceback" not in r.output
    assert not out.exists()


def test_cli_errors_are_one_line(tmp_path: Path):
    t = fa_table()
    t["provenance"]["runner"] = "replay"
    path = tmp_path / "replay.yaml"
    path.write_text(dump_yaml(t))
    r = CliRunner().invoke(app, ["deploy", str(path), "-o", str(tmp_path / "p.yaml"), "--vllm", "0.20.0"])
    assert r.exit_code == 2 and "runner 'replay'" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(app, ["deploy", str(path), "-o", str(tmp_path / "p.yaml"), "--workload", "nope"])
    assert r.exit_code == 2 and "unknown workload 'nope'" in r.output


def test_a_value_is_priced_as_the_runner_resolved_it():
    """fa2 turns the split cap off (vLLM never reads it under FA2), so the recorded fa2 configs carry the idle cap
    32; a shape tuned to cap 1 must be priced at fa2 with that recorded config, not reported "not measured"."""
    from mla_tune.tables.export import load_table

    table = load_table(Path(__file__).resolve().parents[1] / "results/h200/run1/tables/FLASH_ATTN_MLA-deepseek-v3-tp1.yaml")
    entry = next(e for e in table["entries"] if e["shape"] == "64q1s4k")
    entry.update(tuned=True, params={**entry["default_params"], "prefill_backend": "fa2"})  # a candidate to price
    d = deploy([table], None, "0.20.0")
    (prefill,) = [g for g in d.globals_ if g.knob == "prefill_backend"]
    assert not [why for v, why in prefill.rejected if "not measured" in why], prefill.rejected
    assert all(ms is not None for _, _, ms, _ in prefill.costs)  # fa2 priced on every shape from its recording


def test_per_batch_points_are_priced_under_the_chosen_global_values():
    """FA2 prefill chosen for the deployment turns FA3's scheduler off, and with it the split cap: a cap tuned with
    FA3 prefill is then not a point of the profile (before, deploy kept it beside the FA2 flag)."""
    t = table("FLASH_ATTN_MLA", [
        entry("64q1s4k", FA, [({}, 0.145), ({"prefill_backend": "fa2"}, 0.120), ({"max_num_splits": 1}, 0.150)],
              best={"prefill_backend": "fa2"}),
        entry("256q1s4k", FA, [({}, 0.560), ({"max_num_splits": 1}, 0.511), ({"prefill_backend": "fa2"}, 0.600)],
              best={"max_num_splits": 1}),
    ])
    d = deploy([t], traffic(_64q1s4k=10, _256q1s4k=1))
    assert dict(d.profile.global_)["prefill_backend"] == "fa2"
    assert d.profile.rule("max_num_splits") is None
    kept = deploy([t], traffic(_64q1s4k=1, _256q1s4k=10))  # auto prefill wins: the cap point stands
    assert dict(kept.profile.global_).get("prefill_backend", "auto") == "auto"
    assert kept.profile.rule("max_num_splits").select(256).value == 1


def test_a_triton_deployment_on_a_vllm_with_int32_kv_offsets_says_what_to_keep_below(tmp_path: Path):
    """vLLM 0.20-0.24's TRITON_MLA decode faults past 2**31 elements of one layer's KV cache (fixed in 0.25)."""
    tri = table("TRITON_MLA", [entry("8q1s4k", TRITON, [({}, 0.20), ({"num_kv_splits": 4}, 0.18)],
                                     best={"num_kv_splits": 4})])
    (caution,) = deploy([tri], vllm="0.20.0").cautions
    assert "3,728,270 token slots" in caution and "--num-gpu-blocks-override 58254" in caution  # 2**31 // 576
    assert len(deploy([tri], vllm="0.24.0").cautions) == 1
    assert deploy([tri], vllm="0.25.0").cautions == () and deploy([tri], vllm="0.26.0").cautions == ()
    assert deploy([fa_table()], vllm="0.20.0").cautions == ()  # a TRITON_MLA fact
    out = tmp_path / "p.yaml"
    r = CliRunner().invoke(app, ["deploy", str(write_table(tri, tmp_path / "t.yaml")), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert [ln for ln in r.output.splitlines() if ln.startswith("  caution: ")] == [f"  caution: {caution}"]
    flags_out = CliRunner().invoke(app, ["flags", str(tmp_path / "t.yaml"), "--vllm", "0.20.0"]).output
    assert flags_out.splitlines()[-1] == f"# caution: {caution}"
    assert "caution" not in CliRunner().invoke(app, ["flags", str(tmp_path / "t.yaml"), "--vllm", "0.26.0"]).output


def test_a_point_follows_its_neighbours_tuned_value_where_its_own_measurements_agree():
    """Cap 1 confirmed at 64 tokens only; at 128 its own trials put cap 1 3% ahead (not confirmed alone), at 256 1%
    behind, at 32 well behind: the profile takes cap 1 at 64 and 128, pooled, and says so; not at 32 or 256."""
    t = table("FLASH_ATTN_MLA", [
        entry("32q1s4k", FA, [({}, 0.090), ({"max_num_splits": 1}, 0.100)]),
        entry("64q1s4k", FA, [({}, 0.145), ({"max_num_splits": 1}, 0.137)], best={"max_num_splits": 1}),
        entry("128q1s4k", FA, [({}, 0.280), ({"max_num_splits": 1}, 0.272)]),
        entry("256q1s4k", FA, [({}, 0.550), ({"max_num_splits": 1}, 0.556)]),
    ])
    d = deploy([t])
    [rule] = d.profile.per_batch
    assert [(p.tokens, p.value) for p in rule.points] == [(32, 32), (64, 1), (128, 1), (256, 32)]
    [q] = d.pooled
    assert (q.tokens, q.value, q.after) == (128, 1, 64) and q.own_ratio == pytest.approx(0.280 / 0.272)
    from mla_tune.views.render_serving import deploy_lines

    text = "\n".join(deploy_lines(d, "p.yaml"))
    assert "pooled: 128 -> 1 follows 64's confirmed value; not confirmed at 128q1s4k alone, where it measured x1.029" \
        in text
