#!/usr/bin/env python3
"""Per-trial overhead of the vLLM runner outside the timed GPU work: cached engine vs rebuilding it per trial.

    PYTHONPATH=src:/opt/mla-kit/site python3 bench/overhead.py [--reps 5] [--json PATH]

(a) "cached": the runner as a study uses it; VllmConfig, impl, builder and metadata are built once and reused,
    a trial that changes only a split count rebuilds nothing.
(b) "rebuild": the same runner with ``rebuild_every_trial`` (VllmConfig + impl + builder + metadata built anew
    every trial, as vLLM's benchmarks/attention_benchmarks/mla_runner.py does per call).
Each case is measured once per mode before the repetitions, so one-time costs (worker start, JIT) are out.
"outside" is the trial's wall time in the parent minus the timed samples; "setup" is engine + inputs +
metadata in the worker. Inputs (KV caches) and numerics references are cached in both modes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from mla_tune.batch_spec import parse
from mla_tune.models import get_model
from mla_tune.runners.vllm import VllmRunner
from mla_tune.vllm_adapters import default_adapter
from mla_tune.types import Case, freeze_params

SPEC = "64q1s4k"
TRIALS = [("FLASH_ATTN_MLA", {"max_num_splits": 1}), ("FLASH_ATTN_MLA", {"max_num_splits": 8}),
          ("FLASH_ATTN_MLA", {"max_num_splits": 32}), ("TRITON_MLA", {"num_kv_splits": "auto"}),
          ("TRITON_MLA", {"num_kv_splits": 4}), ("TRITON_MLA", {"num_kv_splits": 16})]


def make_case(backend: str, params: dict, spec: str, model: str, tp: int) -> Case:
    shape = parse(spec)
    config = default_adapter().search_space(backend).default_config(shape)
    config.update(params)
    return Case(backend, shape, get_model(model, tp), freeze_params(config))


def run_mode(mode: str, cases: list[Case], args: argparse.Namespace) -> tuple[list[dict], object]:
    runner = VllmRunner(warmup=args.warmup, samples=args.samples, rebuild_every_trial=(mode == "rebuild"))
    rows = []
    try:
        env = runner.environment()
        for case in cases:  # first use: worker start, JIT, references
            runner.measure(case)
        before = runner.stats()
        for rep in range(args.reps):
            for case in cases:
                t0 = time.perf_counter()
                m = runner.measure(case)
                wall = time.perf_counter() - t0
                ph = runner.last_phases
                rows.append({"mode": mode, "rep": rep, "backend": case.backend, "params": dict(case.params),
                             "status": m.status.value, "median_ms": m.median_ms if m.ok else None,
                             "message": m.message, "wall_s": wall,
                             "outside_s": wall - ph.get("timed_s", 0.0), "setup_s": ph.get("setup_s", 0.0),
                             "numerics_s": ph.get("numerics_s", 0.0), "warmup_s": ph.get("warmup_s", 0.0),
                             "timed_s": ph.get("timed_s", 0.0)})
        after = runner.stats()
        builds = {k: after.get(k, 0) - before.get(k, 0) for k in ("engine_builds", "metadata_builds")}
        print(f"{mode}: builds during the repetitions: {builds}", flush=True)
    finally:
        runner.close()
    return rows, env


def label(row: dict) -> str:
    keep = {k: v for k, v in row["params"].items() if k in ("max_num_splits", "num_kv_splits")}
    return f"{row['backend']} " + ",".join(f"{k}={v}" for k, v in keep.items())


def table(rows: list[dict]) -> dict[str, float]:
    print(f"\n{'case':<38} {'mode':<8} {'status':<7} {'median ms':>9} {'outside ms':>10} {'setup ms':>9} "
          f"{'numerics ms':>11} {'warmup ms':>9} {'timed ms':>8}")
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((label(r), r["mode"]), []).append(r)
    for (name, mode), rs in groups.items():
        med = lambda k: statistics.median(x[k] for x in rs) * 1e3  # noqa: E731
        kernel = [x["median_ms"] for x in rs if x["median_ms"] is not None]
        print(f"{name:<38} {mode:<8} {rs[0]['status']:<7} "
              f"{(statistics.median(kernel) if kernel else float('nan')):>9.4f} {med('outside_s'):>10.1f} "
              f"{med('setup_s'):>9.1f} {med('numerics_s'):>11.1f} {med('warmup_s'):>9.1f} {med('timed_s'):>8.1f}")
    total = {mode: statistics.mean(r["outside_s"] for r in rows if r["mode"] == mode)
             for mode in ("cached", "rebuild")}
    setup = {mode: statistics.mean(r["setup_s"] for r in rows if r["mode"] == mode)
             for mode in ("cached", "rebuild")}
    print(f"\nmean per-trial time outside the timed GPU work: cached {total['cached'] * 1e3:.1f} ms, "
          f"rebuild {total['rebuild'] * 1e3:.1f} ms, ratio (b)/(a) = {total['rebuild'] / total['cached']:.2f}")
    print(f"mean per-trial setup (engine + metadata): cached {setup['cached'] * 1e3:.2f} ms, rebuild "
          f"{setup['rebuild'] * 1e3:.2f} ms, ratio = {setup['rebuild'] / max(setup['cached'], 1e-9):.1f}")
    return {"outside_ratio": total["rebuild"] / total["cached"], **{f"outside_{k}_s": v for k, v in total.items()},
            **{f"setup_{k}_s": v for k, v in setup.items()}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--samples", type=int, default=30)
    ap.add_argument("--spec", default=SPEC)
    ap.add_argument("--model", default="deepseek-v3")
    ap.add_argument("--tp", type=int, default=8)
    ap.add_argument("--json", default="", help="save the raw rows and the summary here")
    args = ap.parse_args()
    cases = [make_case(b, p, args.spec, args.model, args.tp) for b, p in TRIALS]
    rows, env = run_mode("cached", cases, args)
    rows += run_mode("rebuild", cases, args)[0]
    print(f"GPU {env.gpu_name} (cc {env.compute_capability}), CUDA {env.cuda}, torch {env.torch}, "
          f"vLLM {env.vllm}, mla-tune {env.mla_tune}; {args.spec} {args.model} tp{args.tp}, "
          f"{args.reps} reps, warmup {args.warmup}, samples {args.samples}")
    summary = table(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env.as_dict(), "summary": summary, "rows": rows}, f, indent=1)
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
