#!/usr/bin/env python3
"""Search efficiency on recorded landscapes: how many trials each sampler needs to find the optimum.

For every landscape in the recorded sweeps (one backend x model dims x kv dtype x shape, with every config
measured) and every sampler, over several seeds, runs a study through the replay runner (in-memory storage, no
confirmation) and reports:
  - trials to 1%: distinct measurements until a config whose *recorded* median is within 1% of the recorded
    optimum has been measured (the recorded medians are the truth, pooled over configs that run the same kernels;
    the study itself sees resampled noise);
  - regret@25%: after a quarter of the exhaustive count, how much slower than the optimum the config is that
    the study would pick (lowest observed latency), in percent.
Target: the default sampler (auto) reaches the optimum in at most a quarter of the exhaustive trial count,
median over landscapes.

    python bench/search_efficiency.py results/sweeps/h100 [--seeds 10] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import optuna

from mla_tune import batch_spec
from mla_tune.plan import StudyRequest, StudyTarget, config_set_key
from mla_tune.runners.replay import ReplayRunner
from mla_tune.sampling import detail_key
from mla_tune.space import load_space
from mla_tune.study import check_space_available, run_trials
from mla_tune.types import MLADims
from mla_tune.workloads import Workload, WorkloadShape

SAMPLERS = ("auto", "tpe", "random", "grid")


# A config's ``auto`` values resolve to what the recording's details say vLLM ran; configs that resolve alike run
# the same kernels (``auto`` and ``fa3`` prefill on an H100, ``auto`` and 2 TRITON splits where the heuristic
# picks 2), so their recordings are pooled into one truth. Otherwise a second recording of the default's own
# kernels that happened to read 1% faster would count as "finding the optimum".
def kernels_of(rec: dict) -> str:
    details = rec.get("details") or {}
    resolved = {k: details.get(detail_key(k), v) if v == "auto" else v for k, v in rec["config"].items()}
    return json.dumps({k: str(v) for k, v in resolved.items()}, sort_keys=True)


def landscapes(runner: ReplayRunner) -> dict[tuple, dict[str, float]]:
    """(backend, dims json, kv, shape) -> {config key: median ms of the pooled recordings of its kernels}."""
    pooled: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    kernels: dict[tuple, dict[str, str]] = defaultdict(dict)
    for rec in runner.truth().values():
        if rec["status"] == "ok":
            land = (rec["backend"], json.dumps(rec["model"], sort_keys=True), rec["kv_cache_dtype"], rec["shape"])
            pooled[land][kernels_of(rec)] += rec["samples_ms"]
            kernels[land][config_set_key([rec["config"]])] = kernels_of(rec)
    return {land: {key: statistics.median(pooled[land][k]) for key, k in keys.items()}
            for land, keys in kernels.items()}


def run_one(runner: ReplayRunner, land: tuple, sampler: str, seed: int, budget: int) -> list[str]:
    """Keys of the configs measured, in order (reused duplicates left out)."""
    backend, dims_json, kv, spec = land
    d = json.loads(dims_json)
    dims = MLADims(d["model"], d["tp"], d["num_q_heads"], d["kv_lora_rank"], d["qk_rope_head_dim"],
                   d["qk_nope_head_dim"], d["v_head_dim"], d.get("q_lora_rank"))
    shape = batch_spec.parse(spec)
    wl = Workload(f"spec:{spec}", "", (WorkloadShape(spec, shape),))
    space, _ = check_space_available(load_space(backend), runner)
    request = StudyRequest(backend, wl, dims, kv, "per-shape", sampler, budget, None, seed)
    target = StudyTarget(f"bench/{spec}", wl.shapes, space, request)
    study = run_trials(target, optuna.storages.InMemoryStorage(), runner, runner.environment())
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    return [t.user_attrs["key"] for t in trials if "status" in t.user_attrs and "duplicate_of" not in t.user_attrs]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sweeps", help="a sweep file or directory (as for --runner replay:PATH)")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--samplers", default=",".join(SAMPLERS))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    runner = ReplayRunner.open(args.sweeps, seed=0)
    lands = landscapes(runner)
    env = runner.environment()
    print(f"landscapes: {len(lands)} from {args.sweeps} ({env.gpu_name}, vLLM {env.vllm}, recorded {env.recorded}; "
          f"runner replay)")
    samplers = args.samplers.split(",")
    rows, t0 = [], time.time()
    per_sampler: dict[str, list[float]] = defaultdict(list)
    for land, truth in sorted(lands.items()):
        size = len(truth)
        if size < 4:
            continue  # nothing to search
        best = min(truth.values())
        good = {k for k, v in truth.items() if v <= 1.01 * best}
        quarter = max(1, size // 4)
        for sampler in samplers:
            hits, regrets = [], []
            for seed in range(args.seeds):
                order = run_one(runner, land, sampler, seed, size)
                hit = next((i + 1 for i, k in enumerate(order) if k in good), size + 1)
                hits.append(hit / size)
                seen = [k for k in order[:quarter] if k in truth]
                picked = min(seen, key=lambda k: truth[k]) if seen else None
                regrets.append(100 * (truth[picked] / best - 1) if picked else float("nan"))
            med = statistics.median(hits)
            per_sampler[sampler].append(med)
            rows.append((land[0], json.loads(land[1])["tp"], land[3], size, sampler, med, statistics.median(regrets)))
    print(f"\n{'backend':<15}{'tp':>3} {'shape':<18}{'configs':>8} {'sampler':<8}{'trials to 1% / configs':>24}"
          f"{'regret@25%':>12}")
    for b, tp, spec, size, sampler, med, reg in rows:
        print(f"{b:<15}{tp:>3} {spec:<18}{size:>8} {sampler:<8}{med:>24.2f}{reg:>11.2f}%")
    print("\nmedian over landscapes of (trials to reach within 1% of the optimum) / (exhaustive trial count),"
          " and of the regret after a quarter of the exhaustive count:")
    for sampler in samplers:
        vals = per_sampler[sampler]
        regrets = [r[6] for r in rows if r[4] == sampler]
        if vals:
            print(f"  {sampler:<8} {statistics.median(vals):.3f}   regret@25% {statistics.median(regrets):.2f}%"
                  f"  (over {len(vals)} landscapes, {args.seeds} seeds each)")
    print(f"({time.time() - t0:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "median": {k: statistics.median(v) for k, v in
                                                                  per_sampler.items() if v}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
