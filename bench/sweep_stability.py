#!/usr/bin/env python3
"""How stable the recordings of sweeps are: drift inside a recording and agreement between recordings of a config.

Reads sweep files (no GPU needed) and prints, per timing mode (graph replay / eager):
- within-recording drift: the median of the last third of a recording's samples over the first third's
  (older sweeps, recorded before the runner checked this: computed here from their raw samples the same way);
  the share of recordings beyond 3% and 5%; recordings the runner re-took and those it marked non-stationary;
- run to run: for configs with several recordings (a sweep's interleaved rounds), max/min of their medians;
  the share within 1%, 2%, and beyond 5%;
- the SM clock seen around the recordings (NVML) and any clock events (power or thermal capping).

    python bench/sweep_stability.py results/sweeps/h200/*.jsonl
    python bench/sweep_stability.py results/sweeps/h100/*.jsonl     # before: one recording per config
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import Counter, defaultdict
from pathlib import Path

from mla_tune.runners._timing_policy import drift
from mla_tune.recordings import read_sweep, record_key


def share(values: list[float], test) -> str:
    return f"{sum(1 for v in values if test(v)) / len(values):.0%}" if values else "-"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sweeps", nargs="+", type=Path)
    args = ap.parse_args()
    drifts: dict[str, list[float]] = defaultdict(list)
    marks: dict[str, Counter] = defaultdict(Counter)
    medians: dict[tuple[str, str], list[float]] = defaultdict(list)
    clocks: Counter = Counter()
    events: Counter = Counter()
    env = None
    for path in args.sweeps:
        header, records = read_sweep(path)
        env = env or header["environment"]
        for r in records:
            if r["status"] != "ok":
                continue
            d = r.get("details", {})
            mode = d.get("timing", "graph" if r["config"].get("cuda_graphs") else "eager")
            drifts[mode].append(drift(r["samples_ms"]))
            marks[mode]["retaken"] += int(d.get("retakes", "0") or 0) > 0
            marks[mode]["non-stationary"] += d.get("stationary") == "no"
            key = record_key(r["backend"], r["model"], r["kv_cache_dtype"], r["shape"], r["config"])
            medians[(mode, key)].append(statistics.median(r["samples_ms"]))
            if "sm_clock_mhz" in d:
                clocks[d["sm_clock_mhz"]] += 1
                events[d.get("clock_events", "none")] += 1
    gpu = (env or {}).get("gpu", {}).get("name", "?")
    print(f"{gpu}, vLLM {(env or {}).get('vllm')}, runner {(env or {}).get('runner')}: "
          f"{', '.join(p.name for p in args.sweeps)}\n")
    print("| timing | recordings | drift > 3% | drift > 5% | re-taken | marked non-stationary | configs with >1 "
          "recording | rounds within 1% | within 2% | beyond 5% |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for mode in sorted(drifts):
        ds = [abs(x) for x in drifts[mode]]
        spreads = [max(m) / min(m) - 1 for (md, _), m in medians.items() if md == mode and len(m) > 1]
        print(f"| {mode} | {len(ds)} | {share(ds, lambda v: v > 0.03)} | {share(ds, lambda v: v > 0.05)} | "
              f"{marks[mode]['retaken']} | {marks[mode]['non-stationary']} | {len(spreads)} | "
              f"{share(spreads, lambda v: v <= 0.01)} | {share(spreads, lambda v: v <= 0.02)} | "
              f"{share(spreads, lambda v: v > 0.05)} |")
    if clocks:
        top = ", ".join(f"{k} MHz x{n}" for k, n in clocks.most_common(4))
        print(f"\nSM clock around the recordings (NVML): {top}; clock events: "
              + ", ".join(f"{k} x{n}" for k, n in events.most_common()))
    else:
        print("\nno NVML clock readings in these sweeps (recorded before the runner read them)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
