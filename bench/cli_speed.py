#!/usr/bin/env python3
"""How fast the ``mla-tune`` command answers: each command run as a new process, the median of N runs, against
the targets of issue 12 (listing and help 0.5 s; ``show`` of 100 studies and a resume with nothing to do 2 s).

    python bench/cli_speed.py [--runs 5] [--work DIR] [--rebuild] [--importtime]

The 100 studies are replayed from the H100 sweeps (``results/sweeps/h100``) into ``DIR/studies.journal`` once
(about a minute on 2 cores) and reused by later runs; ``--rebuild`` makes them again. ``--importtime`` also prints
the slowest imports of ``mla-tune workloads`` (``python -X importtime``), where a slow listing usually starts.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPLAY = "replay:results/sweeps/h100"
TABLE = "results/h200/tables/FLASH_ATTN_MLA-deepseek-v3-tp1.yaml"
LIST_TARGET_S, HEAVY_TARGET_S = 0.5, 2.0
# (backend, workload, tp) replayed into the show/resume journal: 105 studies, every one recorded at the H100.
STUDIES = ([(b, w, 1) for b in ("FLASH_ATTN_MLA", "TRITON_MLA", "FLASHMLA")
            for w in ("decode_1k", "decode_4k", "decode_16k", "spec_decode", "mixed", "prefill_4k")]
           + [(b, "decode_4k", 8) for b in ("FLASH_ATTN_MLA", "TRITON_MLA", "FLASHMLA")])
RESUMED = ("FLASH_ATTN_MLA", "spec_decode", 1)


def mla_tune() -> list[str]:
    """The installed entry point next to this Python, else the module (the same code either way)."""
    script = Path(sys.executable).with_name("mla-tune")
    return [str(script)] if script.exists() else [sys.executable, "-m", "mla_tune.cli"]


def build_journal(journal: Path) -> int:
    """Replay ``STUDIES`` into ``journal`` (in this process: Optuna is imported once); returns the study count."""
    from mla_tune import api

    journal.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    for backend, workload, tp in STUDIES:
        t0 = time.perf_counter()
        out = api.run_study(backend=backend, workload=workload, tp=tp, runner=REPLAY, storage=str(journal))
        n += len(out.summaries)
        print(f"  built {backend} {workload} tp{tp}: {len(out.summaries)} studies in "
              f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return n


def stored_studies(journal: Path) -> int:
    from mla_tune import api

    return len(api.find_studies(storage=str(journal))) if journal.exists() else 0


def timed(argv: list[str], runs: int, env: dict[str, str]) -> tuple[float, int]:
    """Median wall time of ``runs`` runs of ``argv`` (after one untimed run that warms the file cache)."""
    times, rc = [], 0
    for i in range(runs + 1):
        t0 = time.perf_counter()
        out = subprocess.run(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if i:
            times.append(time.perf_counter() - t0)
        if out.returncode != 0:
            rc = out.returncode
            print(f"  exit {rc}: {' '.join(argv[-6:])}: {out.stderr.strip()[-300:]}", file=sys.stderr)
    return statistics.median(times), rc


def commands(journal: Path) -> list[tuple[str, list[str], float]]:
    backend, workload, tp = RESUMED
    resume = ["study", "--runner", REPLAY, "--backend", backend, "--workload", workload, "--tp", str(tp),
              "--storage", str(journal)]
    return [
        ("mla-tune --help", ["--help"], LIST_TARGET_S),
        ("mla-tune study --help", ["study", "--help"], LIST_TARGET_S),
        ("mla-tune workloads", ["workloads"], LIST_TARGET_S),
        ("mla-tune spaces", ["spaces"], LIST_TARGET_S),
        ("mla-tune spaces --models", ["spaces", "--models"], LIST_TARGET_S),
        ("mla-tune backends (no torch: every backend, why not)", ["backends"], LIST_TARGET_S),
        (f"mla-tune backends --runner {REPLAY}", ["backends", "--runner", REPLAY], LIST_TARGET_S),
        ("mla-tune show TABLE", ["show", TABLE], LIST_TARGET_S),
        ("mla-tune show (the 100-study journal)", ["show", "--storage", str(journal)], HEAVY_TARGET_S),
        ("mla-tune study ... (resume, nothing to do)", resume, HEAVY_TARGET_S),
    ]


def importtime(env: dict[str, str], top: int = 15) -> None:
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", "from mla_tune.cli import main; main()",
                          "workloads"], cwd=ROOT, env=env, capture_output=True, text=True)
    rows = []
    for line in out.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[1].strip().isdigit():
            rows.append((int(parts[1]), parts[2].rstrip()))
    print("\nslowest imports of `mla-tune workloads` (cumulative us, nesting shown by indent):")
    for us, name in sorted(rows, reverse=True)[:top]:
        print(f"  {us:>8}  {name}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5, help="timed runs per command (median reported)")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "mla-tune-cli-speed",
                    help="where the 100-study journal is kept between runs")
    ap.add_argument("--rebuild", action="store_true", help="replay the 100 studies again")
    ap.add_argument("--importtime", action="store_true", help="also print the slowest imports of a listing")
    args = ap.parse_args()

    journal = args.work / "studies.journal"
    if args.rebuild and args.work.exists():
        shutil.rmtree(args.work)
    if stored_studies(journal) < 100:
        print(f"replaying {len(STUDIES)} study commands into {journal} ...", file=sys.stderr)
        build_journal(journal)
    n = stored_studies(journal)
    env = dict(os.environ, COLUMNS="200")
    env.pop("MLA_TUNE_STORAGE", None)
    print(f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, journal of {n} studies; median of {args.runs} "
          "runs, each a new process")
    print(f"{'command':<62} {'median s':>9} {'target s':>9}  verdict")
    failed = 0
    for label, argv, target in commands(journal):
        median, rc = timed(mla_tune() + argv, args.runs, env)
        ok = rc == 0 and median <= target
        failed += not ok
        verdict = "ok" if ok else (f"FAILED (exit {rc})" if rc else "SLOW")
        print(f"{label:<62} {median:>9.3f} {target:>9.1f}  {verdict}")
    if args.importtime:
        importtime(env)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
