#!/usr/bin/env python3
"""Self-check of the vLLM runner on a GPU: every backend x representative shape, one line per case.

    PYTHONPATH=src:/opt/mla-kit/site python3 bench/gpu_selfcheck.py [--quick] [--only TEXT] [--json PATH]

Exercises decode, spec-decode through both pipelines, mixed batches, prefill with auto/fa2/fa3/fa4, forced
TRITON split counts, FLASH_ATTN_MLA split caps under graphs, fp8 KV caches, the Blackwell-only backends'
refusals and an OOM. It never stops at the first failure; each line says status, median ms, spread,
rel err vs the default config and the runner's details. Exit code 0 when every case ended as expected.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback

from mla_tune.batch_spec import parse
from mla_tune.models import get_model
from mla_tune.runners.vllm import VllmRunner
from mla_tune.vllm_adapters import default_adapter
from mla_tune.types import Case, freeze_params

OK, UNSUP, OOM = {"ok"}, {"unsupported"}, {"oom"}
# (group, backend, spec, model@tp, kv dtype, params, expected statuses)
CASES = [
    ("decode", "FLASH_ATTN_MLA", "8q1s1k", "deepseek-v3@8", "auto", {}, OK),
    ("decode", "FLASHMLA", "64q1s4k", "deepseek-v3@8", "auto", {}, OK),
    ("decode", "FLASH_ATTN_MLA", "64q1s4k", "deepseek-v3@8", "auto", {}, OK),
    ("decode", "TRITON_MLA", "64q1s4k", "deepseek-v3@8", "auto", {}, OK),
    ("decode", "FLASHMLA", "32q1s4k", "deepseek-v3@1", "auto", {}, OK),
    ("decode", "FLASH_ATTN_MLA", "32q1s4k", "deepseek-v3@1", "auto", {}, OK),
    ("decode", "TRITON_MLA", "32q1s4k", "deepseek-v3@1", "auto", {}, OK),
    ("decode", "FLASHMLA", "64q1s4k", "deepseek-v3@8", "auto", {"cuda_graphs": False}, OK),
    ("decode", "FLASH_ATTN_MLA", "q1s16k", "kimi-k2@8", "auto", {}, OK),
    ("refused", "CUTLASS_MLA", "64q1s4k", "deepseek-v3@8", "auto", {}, UNSUP),
    ("refused", "FLASHINFER_MLA", "64q1s4k", "deepseek-v3@8", "auto", {}, UNSUP),
    ("refused", "CUTLASS_MLA", "64q1s4k", "deepseek-v3@8", "auto", {"num_kv_splits": 8}, UNSUP),
    ("spec", "FLASH_ATTN_MLA", "32q4s4k", "deepseek-v3@8", "auto", {"reorder_batch_threshold": 512}, OK),
    ("spec", "FLASH_ATTN_MLA", "32q4s4k", "deepseek-v3@8", "auto",
     {"reorder_batch_threshold": 1, "cuda_graphs": False}, OK),
    ("spec", "FLASHMLA", "32q4s4k", "deepseek-v3@8", "auto", {"reorder_batch_threshold": 128}, OK),
    ("spec", "FLASHMLA", "32q4s4k", "deepseek-v3@8", "auto",
     {"reorder_batch_threshold": 1, "cuda_graphs": False}, OK),
    ("spec", "TRITON_MLA", "32q4s4k", "deepseek-v3@8", "auto", {}, OK),
    ("mixed", "FLASH_ATTN_MLA", "q1ks4k_64q1s4k", "deepseek-v3@8", "auto", {}, OK),
    ("mixed", "FLASH_ATTN_MLA", "q1ks4k_64q1s4k", "deepseek-v3@8", "auto", {"prefill_backend": "fa2"}, OK),
    ("mixed", "FLASH_ATTN_MLA", "2q512s2k_16q1s2k", "deepseek-v3@8", "auto",
     {"reorder_batch_threshold": 64}, OK),
    ("mixed", "FLASHMLA", "q1ks4k_64q1s4k", "deepseek-v3@8", "auto", {}, OK),
    ("mixed", "TRITON_MLA", "q2ks8k_32q1s4k", "deepseek-v3@1", "auto", {}, OK),
    ("prefill", "FLASH_ATTN_MLA", "q2ks4k", "deepseek-v3@8", "auto", {}, OK),
    ("prefill", "FLASH_ATTN_MLA", "q2ks4k", "deepseek-v3@8", "auto", {"prefill_backend": "fa2"}, OK),
    ("prefill", "FLASH_ATTN_MLA", "q2ks4k", "deepseek-v3@8", "auto", {"prefill_backend": "fa3"}, OK),
    ("prefill", "FLASH_ATTN_MLA", "q2ks4k", "deepseek-v3@8", "auto", {"prefill_backend": "fa4"},
     OK | UNSUP),
    ("prefill", "FLASHMLA", "4q1k", "deepseek-v3@1", "auto", {}, OK),
    ("prefill", "TRITON_MLA", "q4ks16k", "deepseek-v3@1", "auto", {"prefill_backend": "fa2"}, OK),
    ("prefill", "TRITON_MLA", "q4k", "deepseek-v3@8", "auto", {"prefill_backend": "flashinfer"}, UNSUP),
    ("triton-splits", "TRITON_MLA", "8q1s4k", "deepseek-v3@8", "auto", {"num_kv_splits": 1}, OK),
    ("triton-splits", "TRITON_MLA", "8q1s4k", "deepseek-v3@8", "auto", {"num_kv_splits": 4}, OK),
    ("triton-splits", "TRITON_MLA", "8q1s4k", "deepseek-v3@8", "auto", {"num_kv_splits": 16}, OK),
    ("triton-splits", "TRITON_MLA", "8q1s4k", "deepseek-v3@8", "auto", {"num_kv_splits": 64}, OK),
    ("fa-splits", "FLASH_ATTN_MLA", "64q1s4k", "deepseek-v3@8", "auto", {"max_num_splits": 1}, OK),
    ("fa-splits", "FLASH_ATTN_MLA", "64q1s4k", "deepseek-v3@8", "auto", {"max_num_splits": 8}, OK),
    ("fa-splits", "FLASH_ATTN_MLA", "64q1s4k", "deepseek-v3@8", "auto", {"max_num_splits": 64}, OK),
    ("fa-splits", "FLASH_ATTN_MLA", "64q1s4k", "deepseek-v3@8", "auto",
     {"max_num_splits": 8, "prefill_backend": "fa2"}, OK),
    ("fp8", "FLASHMLA", "64q1s4k", "deepseek-v3@8", "fp8", {}, OK),
    ("fp8", "TRITON_MLA", "64q1s4k", "deepseek-v3@8", "fp8", {"num_kv_splits": 8}, OK),
    ("fp8", "FLASH_ATTN_MLA", "64q1s4k", "deepseek-v3@8", "fp8", {}, UNSUP),
    ("fp8", "FLASHMLA", "q1ks4k_64q1s4k", "deepseek-v3@8", "fp8", {}, OK),
    ("big", "FLASHMLA", "256q1s64k", "deepseek-v3@8", "auto", {}, OK),
    ("big", "FLASH_ATTN_MLA", "q16k", "deepseek-v3@1", "auto", {}, OK),
    ("oom", "TRITON_MLA", "1024q1s160k", "deepseek-v3@8", "auto", {}, OOM),
    ("after-oom", "TRITON_MLA", "8q1s1k", "deepseek-v3@8", "auto", {}, OK),
]
QUICK = {"decode", "refused", "spec", "mixed", "prefill", "triton-splits", "fa-splits", "fp8"}


def make_case(backend: str, spec: str, model: str, kv: str, params: dict) -> Case:
    name, _, tp = model.partition("@")
    shape = parse(spec)
    config = default_adapter().search_space(backend).default_config(shape)
    config.update(params)
    return Case(backend, shape, get_model(name, int(tp or 1)), freeze_params(config), kv)


def short(params: dict) -> str:
    abbrev = {"reorder_batch_threshold": "thr", "prefill_backend": "pf", "num_kv_splits": "splits",
              "max_num_splits": "cap", "cuda_graphs": "graph"}
    return ",".join(f"{abbrev.get(k, k)}={v}" for k, v in sorted(params.items())) or "-"


def run_case(runner: VllmRunner, row: tuple) -> dict:
    group, backend, spec, model, kv, params, expected = row
    t0 = time.perf_counter()
    try:
        case = make_case(backend, spec, model, kv, params)
        m = runner.measure(case)
        res = {"status": m.status.value, "median_ms": m.median_ms if m.ok else None,
               "spread": m.spread if m.ok else None, "rel_err": m.rel_err, "message": m.message,
               "details": dict(m.details), "config": dict(case.params)}
    except Exception as exc:  # noqa: BLE001 - a self-check reports everything
        res = {"status": "crash", "message": f"{type(exc).__name__}: {exc}", "details": {},
               "trace": traceback.format_exc()}
    res.update(group=group, backend=backend, spec=spec, model=model, kv=kv, params=params,
               wall_s=time.perf_counter() - t0, expected=sorted(expected),
               as_expected=res["status"] in expected, phases=dict(runner.last_phases))
    return res


def line(r: dict) -> str:
    med = f"{r['median_ms']:.4f}" if r.get("median_ms") is not None else "-"
    spread = f"{r['spread']:.1%}" if r.get("spread") is not None else "-"
    err = f"{r['rel_err']:.1e}" if r.get("rel_err") is not None else "-"
    mark = "  " if r["as_expected"] else "!!"
    det = " ".join(f"{k}={v}" for k, v in sorted(r["details"].items()))
    msg = f" | {r['message']}" if r.get("message") else ""
    return (f"{mark}{r['group']:<13} {r['backend']:<15} {r['spec']:<18} {r['model']:<15} {r['kv']:<4} "
            f"{short(r['params']):<28} {r['status']:<11} {med:>9} {spread:>6} {err:>8} "
            f"{r['wall_s']:6.1f}s  {det}{msg}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="skip the big, OOM and after-OOM cases")
    ap.add_argument("--only", default="", help="run cases whose group/backend/spec contains this text")
    ap.add_argument("--json", default="", help="save every result (with phases and traces) here")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--samples", type=int, default=30)
    args = ap.parse_args()
    rows = [r for r in CASES if (not args.quick or r[0] in QUICK)
            and (not args.only or any(args.only in str(x) for x in r[:4]))]
    results, t0 = [], time.perf_counter()
    runner = VllmRunner(warmup=args.warmup, samples=args.samples)
    try:
        try:
            env = runner.environment()
            print(f"GPU {env.gpu_name} (cc {env.compute_capability}, {env.sm_count} SMs) driver {env.driver} "
                  f"CUDA {env.cuda} torch {env.torch} vLLM {env.vllm} mla-tune {env.mla_tune} "
                  f"{dict(env.extra)}", flush=True)
            for s in runner.backends():
                print(f"  {s.kind:<7} {s.name:<15} {'available' if s.available else 'NO: ' + s.reason}")
        except Exception as exc:  # noqa: BLE001
            print(f"environment/backends FAILED: {type(exc).__name__}: {exc}", flush=True)
        print(f"worker log: {runner.log_path}")
        print(f"  {'group':<13} {'backend':<15} {'spec':<18} {'model':<15} {'kv':<4} {'params':<28} "
              f"{'status':<11} {'median ms':>9} {'spread':>6} {'rel err':>8} {'wall':>7}  details", flush=True)
        for row in rows:
            r = run_case(runner, row)
            results.append(r)
            print(line(r), flush=True)
            if r.get("trace"):
                print(r["trace"], flush=True)
        try:
            print(f"runner stats: {runner.stats()}")
        except Exception as exc:  # noqa: BLE001
            print(f"runner stats FAILED: {exc}")
    finally:
        runner.close()
    bad = [r for r in results if not r["as_expected"]]
    print(f"\n{len(results)} cases in {time.perf_counter() - t0:.0f} s; {len(results) - len(bad)} as expected, "
          f"{len(bad)} not (marked !!)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=str)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
