#!/usr/bin/env python3
"""Multi-worker scaling: trials per second and study wall time with 1, 2 and 4 workers, journal file vs PostgreSQL.

Runs ``mla-tune study --gpus ...`` (``api.run_study_parallel``: real worker processes) with the replay runner on
recorded sweeps (``results/sweeps/`` when present, else a synthetic sweep made here with the test fake, and the
output says so). ``--delay`` adds seconds per measurement (``MLA_TUNE_REPLAY_DELAY_S``) to stand in for GPU time:
0 measures pure coordination overhead (CPU-bound: more workers than cores cannot help), a GPU-like delay shows
how the workers overlap. Confirmation is off (``confirm_top=0``): this times the trials. Not a timed test.

    python bench/scale.py [--sweeps results/sweeps/h100] [--postgres postgresql+psycopg://...] [--json out.json]

``--postgres`` (default ``$MLA_TUNE_TEST_POSTGRES``) must be a scratch database: the studies of the replayed
GPU in it are deleted before each run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import optuna

from mla_tune import api
from mla_tune.runners.replay import DELAY_ENV, ReplayRunner
from mla_tune.storage.urls import open_storage, parse_storage

WORKERS = (1, 2, 4)


def synthetic_sweep(d: Path, backend: str, workload: str) -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.fakes import FakeRunner

    out = d / f"{backend}.jsonl"
    api.run_sweep(backend=backend, workload=workload, output=out, runner=FakeRunner(optimum={"max_num_splits": 8}))
    return out


def clear(url: str, prefix: str) -> None:
    store = open_storage(parse_storage(url), create=True)
    for s in optuna.get_all_study_summaries(store, include_best_trial=False):
        if s.study_name.startswith(prefix):
            optuna.delete_study(study_name=s.study_name, storage=store)


def run_once(url: str, n: int, sweeps: str, backend: str, workload: str) -> tuple[int, float]:
    t0 = time.perf_counter()
    par = api.run_study_parallel(gpus=",".join(str(i) for i in range(n)), backend=backend, workload=workload,
                                 runner=f"replay:{sweeps}", storage=url, confirm_top=0, confirm_rounds=2)
    wall = time.perf_counter() - t0
    if par.failed or par.outcome is None:
        raise SystemExit(f"workers failed: {par.failed}")
    return sum(s.measured for s in par.outcome.summaries), wall


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sweeps", default="results/sweeps")
    ap.add_argument("--backend", default="FLASH_ATTN_MLA")
    ap.add_argument("--workload", default="decode_1k")
    ap.add_argument("--delay", default="0,0.05", help="seconds per measurement, comma-separated")
    ap.add_argument("--postgres", default=os.environ.get("MLA_TUNE_TEST_POSTGRES"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mla-tune-bench-"))
    os.environ.setdefault("MLA_TUNE_LOCK_DIR", str(tmp / "locks"))  # CPU run: don't touch real GPU locks
    sweeps, source = args.sweeps, "recorded"
    if not Path(sweeps).exists() or not list(Path(sweeps).rglob("*.jsonl")):
        sweeps, source = str(synthetic_sweep(tmp, args.backend, args.workload)), "SYNTHETIC (tests/fakes.py)"
    prefix = ReplayRunner.open(sweeps).environment().fingerprint + "/"
    storages = [("journal file", None)] + ([("PostgreSQL", args.postgres)] if args.postgres else [])
    print(f"{platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}, Optuna {optuna.__version__}")
    print(f"replay of {source} sweeps {sweeps}: {args.backend} x {args.workload}, confirmation off")
    rows = []
    print(f"{'storage':<14}{'delay s':>8}{'workers':>8}{'trials':>8}{'wall s':>9}{'trials/s':>10}{'speedup':>9}")
    for delay in [float(x) for x in args.delay.split(",")]:
        os.environ[DELAY_ENV] = str(delay)
        for name, url in storages:
            base = None
            for n in WORKERS:
                target = url or str(tmp / f"{n}-{delay}.journal")
                if url:
                    clear(url, prefix)
                trials, wall = run_once(target, n, sweeps, args.backend, args.workload)
                base = base or trials / wall
                rows.append({"storage": name, "delay_s": delay, "workers": n, "trials": trials,
                             "wall_s": round(wall, 2), "trials_per_s": round(trials / wall, 2),
                             "speedup": round(trials / wall / base, 2)})
                r = rows[-1]
                print(f"{name:<14}{delay:>8g}{n:>8}{trials:>8}{r['wall_s']:>9.2f}{r['trials_per_s']:>10.2f}"
                      f"{r['speedup']:>9.2f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"source": source, "sweeps": sweeps, "cores": os.cpu_count(),
                                         "optuna": optuna.__version__, "rows": rows}, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
