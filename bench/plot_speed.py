#!/usr/bin/env python3
"""How long ``mla-tune plot`` and ``mla-tune report`` take on the committed H200 tables, against the target of
issue 18 (each under 15 s on the 2-core dev VM, where they took 84 s and 99 s).

    python bench/plot_speed.py [--runs 3] [--target 15] [--tables TABLE ...]

Each command runs as a new process, as a user runs it, after one untimed run (file and font caches warm); the
median wall time of ``--runs`` runs is judged, and the CPU time beside it (user + system of the process) shows how
much of the wall time was the command's own on a machine shared with other work. Exits 1 when one is over target.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TABLES = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "results/h200/tables").glob("*.yaml"))
TARGET_S = 15.0


def mla_tune() -> list[str]:
    """The installed entry point next to this Python, else the module (the same code either way)."""
    script = Path(sys.executable).with_name("mla-tune")
    return [str(script)] if script.exists() else [sys.executable, "-m", "mla_tune.cli"]


def timed(argv: list[str], runs: int) -> tuple[float, float, int]:
    """Median wall and CPU seconds of ``runs`` runs of ``argv`` (after one untimed run), and the last exit code."""
    # this checkout's code, whichever one the entry point was installed from
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), *os.environ.get("PYTHONPATH", "").split(
        os.pathsep)]).rstrip(os.pathsep))
    walls, cpus, rc = [], [], 0
    for i in range(runs + 1):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        out = subprocess.run(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             check=False)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if out.returncode != 0:
            rc = out.returncode
            print(f"  exit {rc}: {out.stderr.strip()[-300:]}", file=sys.stderr)
        if i:
            walls.append(wall)
            cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return statistics.median(walls), statistics.median(cpus), rc


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    versions = []
    for name in ("matplotlib", "pillow", "numpy"):
        try:
            versions.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            versions.append(f"{name} missing")
    return f"{os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}, {', '.join(versions)}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="timed runs per command (median reported)")
    ap.add_argument("--target", type=float, default=TARGET_S, help="seconds each command must stay under")
    ap.add_argument("--tables", nargs="+", default=TABLES, help="tables to draw (default: the committed H200 ones)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="mla-tune-plot-speed-") as tmp:
        out = Path(tmp)
        commands = [("mla-tune plot", ["plot", *args.tables, "-o", str(out / "plots")]),
                    ("mla-tune report", ["report", *args.tables, "-o", str(out / "report.html")])]
        print(machine())
        print(f"{len(args.tables)} tables; median of {args.runs} runs, each a new process; "
              f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print(f"{'command':<18} {'wall s':>8} {'cpu s':>8} {'target s':>9}  verdict")
        failed = 0
        for label, argv in commands:
            wall, cpu, rc = timed(mla_tune() + argv, args.runs)
            ok = rc == 0 and wall < args.target
            failed += not ok
            verdict = "ok" if ok else (f"FAILED (exit {rc})" if rc else "SLOW")
            print(f"{label:<18} {wall:>8.2f} {cpu:>8.2f} {args.target:>9.1f}  {verdict}")
        pictures = sorted((out / "plots").glob("*.png"))
        report = out / "report.html"
        print(f"wrote {len(pictures)} pictures, {sum(p.stat().st_size for p in pictures) / 1e6:.2f} MB; report "
              f"{report.stat().st_size / 1e6 if report.exists() else 0:.2f} MB; load average after: "
              f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
