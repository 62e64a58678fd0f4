#!/usr/bin/env python3
"""Per-trial storage cost of Optuna's storages on this machine: why the default is a journal file.

Runs the same study (fake measurements that cost no time) against each storage and reports the wall time per
trial of everything mla-tune writes for a trial (params, ~10 user attrs with 30 raw samples, the value).

    python bench/storage_overhead.py [--trials 200] [--postgres postgresql://...]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time

import optuna

from mla_tune.storage.urls import open_storage, parse_storage

SAMPLES = [0.05 + i * 1e-4 for i in range(30)]


def objective(trial: optuna.Trial) -> float:
    x = trial.suggest_categorical("num_kv_splits", ["auto", 1, 2, 4, 8, 16, 32, 64])
    g = trial.suggest_categorical("cuda_graphs", [False, True])
    trial.set_user_attr("key", f"{x}-{g}")
    trial.set_user_attr("status", "ok")
    trial.set_user_attr("config", {"num_kv_splits": x, "cuda_graphs": g})
    trial.set_user_attr("samples_ms", SAMPLES)
    for k in ("median_ms", "spread", "n_samples", "speedup_vs_default"):
        trial.set_user_attr(k, 1.0)
    trial.set_user_attr("provenance", {"runner": "bench", "gpu": {"name": "none"}})
    return 0.05


def per_trial_ms(url: str, trials: int) -> float:
    storage = open_storage(parse_storage(url), create=True)
    study = optuna.create_study(storage=storage, sampler=optuna.samplers.RandomSampler(seed=0))
    t0 = time.perf_counter()
    study.optimize(objective, n_trials=trials)
    return (time.perf_counter() - t0) / trials * 1000


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--postgres", default=os.environ.get("MLA_TUNE_TEST_POSTGRES"))
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    d = tempfile.mkdtemp()
    cases = [("journal file", os.path.join(d, "s.journal")), ("SQLite", f"sqlite:///{d}/s.db")]
    if args.postgres:
        cases.append(("PostgreSQL", args.postgres))
    print(f"{platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"Optuna {optuna.__version__}, {args.trials} trials each")
    print(f"{'storage':<14}{'ms per trial':>14}")
    for name, url in cases:
        print(f"{name:<14}{per_trial_ms(url, args.trials):>14.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
