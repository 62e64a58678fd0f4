#!/usr/bin/env python3
"""Search efficiency on recorded landscapes: how many trials a sampler needs to reach the exhaustive optimum.

A landscape is one backend x model dims x kv dtype x shape of the recorded sweeps, every config measured. The
studies run as `mla-tune study` runs them, through the replay runner with the default budget (24 distinct configs,
or --budget): the landscapes of one backend, model and kv dtype share one storage and run in the order of one call
with every workload (TP 1 first, then the workload catalogue's order), so a study can warm-start from the nearest
finished shape, as a real one does. No confirmation. Per landscape, median over seeds:
  - trials to 1%: trials run until one measured a config whose *recorded* median is within 1% of the recorded
    optimum. Every trial counts: vLLM's default, warm starts, reused duplicates. (The recorded medians are the
    truth, pooled over configs that run the same kernels; the study itself sees replayed noise.)
  - ratio: trials to 1% / the exhaustive trial count (the landscape's distinct configs). A study that never gets
    there within its budget counts budget + 1.
  - gain: the default's recorded median over the optimum's; "found" says whether the default budget got within 1%
    of the optimum in every seed (asked where the sweep shows a gain of 3% or more).
  - grid: the configs an exhaustive grid over the space as declared would run (every value of every parameter,
    prefill kernels this GPU lacks left out), before mla-tune drops those that cannot run the shape differently.
Targets (issue 11): median ratio <= 0.10 over the landscapes, and no missed gain. Landscapes of fewer than 4
configs are left out (nothing to search). The floor line is an oracle that measures the optimum first.
``auto`` landscapes (``--backend auto``): for each shape recorded for two or more backends at one TP, the union of
their configs, each config with its backend; vLLM's choice (the adapter's priority list) is the default.

    python bench/search_efficiency.py results/sweeps/h200 [--seeds 5] [--samplers auto,tpe] [--budget N] [--isolated]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import optuna

from mla_tune import batch_spec
from mla_tune.records import StudyName
from mla_tune.runners._interleave import pair_stats
from mla_tune.runners.replay import ReplayRunner
from mla_tune.vllm_adapters import default_adapter
from mla_tune.study.budget import DEFAULT_TRIALS
from mla_tune.space_auto import AUTO, AutoSpace
from mla_tune.study.trials import check_space_available, run_trials
from mla_tune.study.setup import build_request
from mla_tune.study.plan import StudyRequest, StudyTarget, config_set_key
from mla_tune.study.sampling import detail_key
from mla_tune.types import MLADims
from mla_tune.workloads import Workload, WorkloadShape, load_workloads

SAMPLERS = ("auto", "tpe", "random", "grid")
GAIN = 1.03  # a gain the sweep proves: the default at least 3% slower than the optimum


# A config's ``auto`` values resolve to what the recording's details say vLLM ran; configs that resolve alike run
# the same kernels (``auto`` and ``fa3`` prefill on an H100, ``auto`` and 2 TRITON splits where the heuristic
# picks 2), so their recordings are pooled into one truth. Otherwise a second recording of the default's own
# kernels that happened to read 1% faster would count as "finding the optimum".
def kernels_of(rec: dict) -> str:
    details = rec.get("details") or {}
    resolved = {k: details.get(detail_key(k), v) if v == "auto" else v for k, v in rec["config"].items()}
    return json.dumps({k: str(v) for k, v in resolved.items()}, sort_keys=True)


def landscapes(runner: ReplayRunner) -> dict[tuple, dict[str, float]]:
    """(backend, dims json, kv, shape) -> {config key: its time, from the pooled recordings of its kernels}.

    Recordings of pairs (sweep schema 2) give a config's time as the default's pooled median over the geometric mean
    of the config's speedups in its pairs: the pairing's precision, not a ratio of separate recordings."""
    pooled: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    ratios: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    refs: dict[tuple, list[float]] = defaultdict(list)
    kernels: dict[tuple, dict[str, str]] = defaultdict(dict)
    for recs in runner.records().values():
        for rec in recs:
            if rec["status"] != "ok":
                continue
            land = (rec["backend"], json.dumps(rec["model"], sort_keys=True), rec["kv_cache_dtype"], rec["shape"])
            k = kernels_of(rec)
            pooled[land][k] += rec["samples_ms"]
            kernels[land][config_set_key([rec["config"]])] = k
            ref = rec.get("reference")
            if rec.get("order") and ref and ref["status"] == "ok":
                order = tuple(int(c) for c in rec["order"])
                ratios[land][k].append(pair_stats((ref["samples_ms"], rec["samples_ms"]), order)[1].speedup)
                refs[land] += ref["samples_ms"]

    def time_of(land: tuple, k: str) -> float:
        if ratios[land].get(k) and refs[land]:
            g = statistics.fmean(math.log(x) for x in ratios[land][k])
            return statistics.median(refs[land]) / math.exp(g)
        return statistics.median(pooled[land][k])

    return {land: {key: time_of(land, k) for key, k in keys.items()} for land, keys in kernels.items()}


def auto_landscapes(lands: dict[tuple, dict[str, float]]) -> dict[tuple, dict[str, float]]:
    """The ``--backend auto`` landscape of each shape recorded for two or more backends: their union, each config
    keyed with its backend (as an auto study keys its trials)."""
    by_shape: dict[tuple, dict[str, float]] = defaultdict(dict)
    backends: dict[tuple, set[str]] = defaultdict(set)
    for (backend, dims_json, kv, spec), truth in lands.items():
        for key, ms in truth.items():
            [config] = json.loads(key)
            by_shape[(AUTO, dims_json, kv, spec)][config_set_key([{"backend": backend, **config}])] = ms
        backends[(AUTO, dims_json, kv, spec)].add(backend)
    return {land: truth for land, truth in by_shape.items() if len(backends[land]) >= 2}


def grid_size(space) -> int:
    """Configs in an exhaustive grid over the declared space (one backend, or the sum over auto's backends)."""
    if isinstance(space, AutoSpace):
        return sum(grid_size(m) for m in space.members)
    n = 1
    for p in space.parameters:
        n *= len(p.values())
    return n


def target_of(runner: ReplayRunner, land: tuple, sampler: str, seed: int, budget: int | None) -> StudyTarget:
    backend, dims_json, kv, spec = land
    d = json.loads(dims_json)
    if backend == AUTO:
        request, space = build_request(backend=AUTO, workload=f"spec:{spec}", model=d["model"], tp=d["tp"],
                                       kv_cache_dtype=kv, sampler=sampler, n_trials=budget, seed=seed)
        space, _ = check_space_available(space, runner, request)
        name = StudyName(runner.environment().fingerprint, f"{request.dims.label}{'' if kv == 'auto' else '-kv' + kv}",
                         AUTO, spec)
        return StudyTarget(str(name), request.workload.shapes, space, request)
    dims = MLADims(d["model"], d["tp"], d["num_q_heads"], d["kv_lora_rank"], d["qk_rope_head_dim"],
                   d["qk_nope_head_dim"], d["v_head_dim"], d.get("q_lora_rank"))
    wl = Workload(f"spec:{spec}", "", (WorkloadShape(spec, batch_spec.parse(spec)),))
    space, _ = check_space_available(default_adapter().search_space(backend, kv), runner)
    request = StudyRequest(backend, wl, dims, kv, "per-shape", sampler, budget, None, seed)
    kvs = "" if kv == "auto" else f"-kv{kv}"
    name = StudyName(runner.environment().fingerprint, f"{dims.label}{kvs}", backend, spec)
    return StudyTarget(str(name), wl.shapes, space, request)


def run_one(runner: ReplayRunner, target: StudyTarget, storage) -> list[str]:
    """Keys of every trial the study ran, in order (reused duplicates and the baseline included)."""
    study = run_trials(target, storage, runner, runner.environment())
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    return [t.user_attrs["key"] for t in trials if "key" in t.user_attrs]


def call_order(lands: list[tuple]) -> list[list[tuple]]:
    """Landscapes grouped as one `mla-tune study` call per backend, model and kv dtype would run them: TP 1 first,
    then the shapes in the workload catalogue's order (decode_1k ... decode_64k, spec_decode, mixed, prefill)."""
    order: dict[str, int] = {}
    for wl in load_workloads().values():
        for spec in wl.specs:
            order.setdefault(spec, len(order))
    groups: dict[tuple, list[tuple]] = defaultdict(list)
    for land in lands:
        groups[(land[0], json.loads(land[1])["model"], land[2])].append(land)
    return [sorted(g, key=lambda la: (json.loads(la[1])["tp"], order.get(la[3], len(order)), la[3]))
            for _, g in sorted(groups.items())]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sweeps", help="a sweep file or directory (as for --runner replay:PATH)")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--samplers", default="auto")
    ap.add_argument("--budget", type=int, default=None, help=f"trial budget per study [default {DEFAULT_TRIALS}]")
    ap.add_argument("--isolated", action="store_true", help="a storage per landscape: no warm start")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    runner = ReplayRunner.open(args.sweeps, seed=0)
    single = landscapes(runner)
    lands = {k: v for k, v in {**single, **auto_landscapes(single)}.items() if len(v) >= 4}
    env = runner.environment()
    budget = args.budget or DEFAULT_TRIALS
    print(f"landscapes: {len(lands)} with 4 or more configs from {args.sweeps} ({env.gpu_name}, vLLM {env.vllm}, "
          f"recorded {env.recorded}; runner replay); budget {budget}"
          + (", each study in its own storage" if args.isolated else ", warm starts within a backend and model"))
    samplers = args.samplers.split(",")
    hits: dict[tuple, list[int | None]] = defaultdict(list)  # (sampler, land) -> trials to 1% per seed
    t0 = time.time()
    for sampler in samplers:
        for seed in range(args.seeds):
            runner = ReplayRunner.open(args.sweeps, seed=seed)
            for group in call_order(list(lands)):
                storage = optuna.storages.InMemoryStorage()
                for land in group:
                    truth = lands[land]
                    good = {k for k, v in truth.items() if v <= 1.01 * min(truth.values())}
                    target = target_of(runner, land, sampler, seed, args.budget)
                    keys = run_one(runner, target, optuna.storages.InMemoryStorage() if args.isolated else storage)
                    hits[(sampler, land)].append(next((i + 1 for i, k in enumerate(keys) if k in good), None))
    rows = []
    for (sampler, land), per_seed in hits.items():
        truth, n = lands[land], len(lands[land])
        trials = statistics.median(h if h is not None else budget + 1 for h in per_seed)
        base = truth.get(config_set_key(target_of(runner, land, sampler, 0, None).default_configs()))
        gain = base / min(truth.values()) if base else float("nan")
        found = all(h is not None for h in per_seed)
        grid = grid_size(target_of(runner, land, sampler, 0, None).space)
        rows.append({"sampler": sampler, "backend": land[0], "tp": json.loads(land[1])["tp"], "shape": land[3],
                     "configs": n, "grid": grid, "trials": trials, "ratio": trials / n, "grid_ratio": trials / grid,
                     "gain": gain, "found": found, "missed": gain >= GAIN and not found})
    rows.sort(key=lambda r: (r["sampler"], r["backend"], r["tp"], r["shape"]))
    print(f"\n{'backend':<15}{'tp':>3} {'shape':<18}{'configs':>8}{'grid':>6} {'sampler':<8}{'trials to 1%':>13}"
          f"{'ratio':>7}{'/grid':>7}{'gain':>8}  found")
    for r in rows:
        found = ("yes" if r["found"] else "MISSED") if r["gain"] >= GAIN else "-"
        print(f"{r['backend']:<15}{r['tp']:>3} {r['shape']:<18}{r['configs']:>8}{r['grid']:>6} {r['sampler']:<8}"
              f"{r['trials']:>13g}{r['ratio']:>7.2f}{r['grid_ratio']:>7.3f}{100 * (r['gain'] - 1):>7.1f}%  {found}")
    print(f"\nmedian over {len(lands)} landscapes, {args.seeds} seeds each ({time.time() - t0:.0f} s):")
    summary = {}
    for sampler in samplers:
        mine = [r for r in rows if r["sampler"] == sampler]
        eff = statistics.median(r["ratio"] for r in mine)
        missed = sum(r["missed"] for r in mine)
        summary[sampler] = {"efficiency": eff, "missed": missed}
        print(f"  {sampler:<8} {eff:.3f} trials/exhaustive, {missed} missed of "
              f"{sum(r['gain'] >= GAIN for r in mine)} gains of {100 * (GAIN - 1):.0f}% or more")
        for kind, sub in (("one backend", [r for r in mine if r["backend"] != AUTO]),
                          ("--backend auto", [r for r in mine if r["backend"] == AUTO])):
            if sub:
                print(f"    {kind:<15} {statistics.median(r['ratio'] for r in sub):.3f} over {len(sub)} landscapes, "
                      f"{sum(r['missed'] for r in sub)} missed")
        print(f"    against the declared grid (before pruning): median "
              f"{statistics.median(r['grid_ratio'] for r in mine):.3f} trials/grid configs")
    floor = statistics.median(1 / len(t) for t in lands.values())
    print(f"  floor    {floor:.3f} (an oracle whose first trial is the optimum)")
    main_sampler = "auto" if "auto" in summary else samplers[0]
    print(f"search efficiency (median trials/exhaustive): {summary[main_sampler]['efficiency']:.3f} (target <= 0.10)"
          + ("" if main_sampler == "auto" else f", sampler {main_sampler}"))
    print(f"missed gains: {summary[main_sampler]['missed']} (target 0)")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "summary": summary, "floor": floor}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
