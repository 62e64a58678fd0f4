#!/usr/bin/env python3
"""Record the GPU evidence of issue 3 in resumable steps: exhaustive sweeps, then real studies.

Run on the GPU machine (PYTHONPATH=src:/opt/mla-kit/site). Every step appends to or resumes files under --out,
so a call cut short by the machine's time limit loses nothing: run the same command again and it carries on.
New units of work are not started after --deadline seconds, so the files are whole when the call returns.

    python3 bench/h100_evidence.py --out DIR --steps sweep,study --tp 8,1 --deadline 520
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from mla_tune import api
from mla_tune.errors import MlaTuneError

BACKENDS = ("FLASHMLA", "FLASH_ATTN_MLA", "TRITON_MLA")
WORKLOADS = ("decode_4k", "spec_decode", "mixed", "prefill_4k")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", default="sweep,study")
    ap.add_argument("--tp", default="8,1")
    ap.add_argument("--backends", default=",".join(BACKENDS))
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--runner", default="vllm:layers=16")
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--confirm-top", type=int, default=2)
    ap.add_argument("--confirm-rounds", type=int, default=4)
    ap.add_argument("--deadline", type=float, default=520.0)
    args = ap.parse_args()
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    t0 = time.time()
    args.out.mkdir(parents=True, exist_ok=True)
    units = [(step, int(tp), b, w) for step in args.steps.split(",") for tp in args.tp.split(",")
             for b in args.backends.split(",") for w in args.workloads.split(",")]
    with api.open_runner(args.runner) as runner:
        env = runner.environment()
        log(f"{env.gpu_name} SM {env.compute_capability}, vLLM {env.vllm}, torch {env.torch}, CUDA {env.cuda}")
        for i, (step, tp, backend, workload) in enumerate(units):
            if time.time() - t0 > args.deadline:
                log(f"deadline reached; {len(units) - i} units left for the next call")
                return 3
            t = time.time()
            try:
                if step == "sweep":
                    n = api.run_sweep(backend=backend, workload=workload, tp=tp, runner=runner,
                                      output=args.out / f"sweep-tp{tp}.jsonl")
                    log(f"sweep {backend} {workload} tp{tp}: {n} new measurements in {time.time() - t:.0f} s")
                else:
                    out = api.run_study(backend=backend, workload=workload, tp=tp, runner=runner,
                                        storage=str(args.out / "studies.journal"), n_trials=args.trials,
                                        confirm_top=args.confirm_top, confirm_rounds=args.confirm_rounds)
                    tuned = sum(1 for s in out.summaries if (s.confirmation or {}).get("winner") is not None)
                    log(f"study {backend} {workload} tp{tp}: {len(out.summaries)} studies, {tuned} tuned, "
                        f"{time.time() - t:.0f} s")
            except MlaTuneError as e:
                log(f"{step} {backend} {workload} tp{tp}: error: {e}")
        stats = runner.stats() if hasattr(runner, "stats") else {}
        log(f"all {len(units)} units done in {time.time() - t0:.0f} s; runner stats {stats}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
