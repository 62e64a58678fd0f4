#!/usr/bin/env python3
"""Per-trial overhead of a study outside the measurement: what mla-tune itself costs per trial (sampler, storage,
claims, heartbeats, records), with the replay runner answering at once (no delay).

Runs `mla-tune study` as the library does (``api.run_study``: one call, several backends and workloads, the default
journal-file storage in a fresh temporary directory, the default sampler and budget) and timestamps every trial
(its progress event); a trial's overhead is the wall time since the previous trial minus the time spent inside
the runner's ``measure``. The first trial of each study (study creation, warm start) is reported apart, as is the
confirmation phase, which measures but runs no trials. Target (issue 11): at most 10 ms per trial on the 2-core
machine with the default storage.

    python bench/trial_overhead.py [--sweeps results/sweeps/h100] [--backend FLASH_ATTN_MLA --backend TRITON_MLA]
                                   [--workload decode_4k] [--profile out.prof]
"""

from __future__ import annotations

import argparse
import cProfile
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna

from mla_tune import api
from mla_tune.runners import Runner, Wrapper
from mla_tune.runners.replay import ReplayRunner
from mla_tune.types import Case, Measurement, PairedMeasurement

TARGET_MS = 10.0


class TimedRunner(Wrapper):
    """The replay runner, with the time spent inside ``measure`` added up."""

    def __init__(self, inner: Runner) -> None:
        super().__init__(inner)
        self.measure_s, self.calls = 0.0, 0

    def measure(self, case: Case) -> Measurement:
        t0 = time.perf_counter()
        try:
            return self.inner.measure(case)
        finally:
            self.measure_s += time.perf_counter() - t0
            self.calls += 1

    def measure_paired(self, cases) -> PairedMeasurement:
        t0 = time.perf_counter()
        try:
            return self.inner.measure_paired(cases)
        finally:
            self.measure_s += time.perf_counter() - t0
            self.calls += 1


def run(args: argparse.Namespace, storage: str) -> dict[str, list[float]]:
    runner = TimedRunner(ReplayRunner.open(args.sweeps, seed=0))
    runner.inner.delay_s = 0.0
    marks: list[tuple[float, float, str, str]] = []  # (time, measure time so far, study, phase)

    def progress(p) -> None:
        marks.append((time.perf_counter(), runner.measure_s, p.study, p.phase))

    t0 = time.perf_counter()
    def one(xs: list) -> Any:  # a single value as one (as older versions of the API took them)
        return xs[0] if len(xs) == 1 else xs

    api.run_study(backend=one(args.backend), workload=one(args.workload), tp=one(args.tp), storage=storage,
                  runner=runner, progress=progress)
    total = time.perf_counter() - t0
    out: dict[str, list[float]] = {"trial": [], "first": [], "confirm": [], "total": [total],
                                   "measure": [runner.measure_s]}
    for (t_a, m_a, study_a, _), (t_b, m_b, study_b, phase) in zip(marks, marks[1:]):
        kind = "confirm" if phase != "trial" else "trial" if study_a == study_b else "first"
        out[kind].append((t_b - t_a) - (m_b - m_a))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sweeps", default="results/sweeps/h100")
    ap.add_argument("--backend", action="append", help="repeatable [FLASH_ATTN_MLA and TRITON_MLA]")
    ap.add_argument("--workload", action="append", help="repeatable [decode_4k]")
    ap.add_argument("--tp", type=int, action="append", help="repeatable [1]")
    ap.add_argument("--profile", type=Path, help="write a cProfile of the study here")
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # as the CLI does
    args.backend = args.backend or ["FLASH_ATTN_MLA", "TRITON_MLA"]
    args.workload = args.workload or ["decode_4k"]
    args.tp = args.tp or [1]
    with tempfile.TemporaryDirectory(prefix="mla-tune-overhead-") as tmp:
        storage = str(Path(tmp) / "studies.journal")  # the default storage kind, in a fresh file
        if args.profile:
            prof = cProfile.Profile()
            out = prof.runcall(run, args, storage)
            prof.dump_stats(args.profile)
        else:
            out = run(args, storage)
    trials = out["trial"]
    ms = [1e3 * x for x in trials]
    print(f"{' '.join(args.backend)} x {' '.join(args.workload)} x tp {' '.join(map(str, args.tp))}, replay of {args.sweeps} (no delay), "
          f"a journal file: {len(trials) + len(out['first'])} trials in {len(out['first']) + 1} studies, "
          f"{out['total'][0]:.2f} s in all, {out['measure'][0]:.2f} s of it inside the runner")
    print(f"per trial outside the measurement: median {statistics.median(ms):.1f} ms, mean "
          f"{statistics.mean(ms):.1f} ms, p90 {sorted(ms)[int(0.9 * len(ms))]:.1f} ms")
    first = [1e3 * x for x in out["first"]]
    if first:
        print(f"first trial of a study (creating it, warm start): median {statistics.median(first):.1f} ms")
    print(f"confirmation steps: {len(out['confirm'])}, {1e3 * sum(out['confirm']):.0f} ms outside the measurement")
    print(f"per-trial overhead: {statistics.mean(ms):.1f} ms (target <= {TARGET_MS:g} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
