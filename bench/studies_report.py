#!/usr/bin/env python3
"""What a journal of real studies says, per backend and TP: confirmed gains, the measured noise floors, the clocks.

For each (GPU, model/TP, backend) group of studies in the storage:
  - studies, distinct configs measured, failed ones, and how many studies confirmed a tuned config;
  - the noise floor each study measured in its confirmation (vLLM's default against itself, paired rounds):
    the median and the widest interval, and how many floors excluded 1 (a floor that does is itself a finding:
    drift between the two halves of a round);
  - the clocks NVML read during the trials: the share of recordings with a clock event (``sw_power_cap`` ...) and
    the SM clock range, which explain a wide floor;
and then every confirmed gain with its interval and the floor it cleared.

    python bench/studies_report.py results/h200/studies.journal [--gpu H200]
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
from collections import defaultdict

import optuna

from mla_tune.records import StudyName
from mla_tune.storage.urls import open_storage, parse_storage


def clocks(details: dict) -> tuple[list[int], str]:
    """The SM clocks (MHz) a recording saw, and its clock events ('none' when there were none)."""
    mhz = [int(x) for x in re.findall(r"\d+", str(details.get("sm_clock_mhz", "")))]
    return mhz, str(details.get("clock_events", "none") or "none")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("storage")
    ap.add_argument("--gpu", default=None, help="only studies of this GPU part, e.g. H200")
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    store = open_storage(parse_storage(args.storage), create=False)
    groups: dict[tuple, dict] = defaultdict(lambda: defaultdict(list))
    gains = []
    for summary in optuna.get_all_study_summaries(store, include_best_trial=False):
        try:
            name = StudyName.parse(summary.study_name)
        except ValueError:
            continue
        if args.gpu and name.gpu != args.gpu:
            continue
        g = groups[(name.gpu, name.model, name.backend)]
        study = optuna.load_study(study_name=summary.study_name, storage=store)
        g["studies"].append(name.label)
        for t in study.trials:
            status = t.user_attrs.get("status")
            if status is None or "duplicate_of" in t.user_attrs:
                continue
            g["failed" if status != "ok" else "measured"].append(1)
            details = t.user_attrs.get("details") or {}
            if status == "ok" and isinstance(details, dict):
                mhz, events = clocks(details)
                g["mhz"] += mhz
                g["events"].append(events != "none")
        conf = study.user_attrs.get("confirmation") or {}
        floor = conf.get("floor") or {}
        if floor.get("ci"):
            g["floors"].append((name.label, floor["ci"]))
        if conf:
            g["confirmed"].append(name.label)
        winner = conf.get("winner")
        if winner is not None:
            c = conf["candidates"][winner]
            g["tuned"].append(name.label)
            changed = {k: v for k, v in c["configs"][0].items() if conf["default"]["configs"][0].get(k) != v}
            gains.append((name, c["speedup"], c["ci"], floor.get("ci"), changed))
    print(f"{'GPU':<6}{'model':<18}{'backend':<16}{'studies':>8}{'measured':>9}{'failed':>7}{'tuned':>6}"
          f"  {'noise floor: median ±':<26}{'widest':<18}{'excl. 1':>8}{'clock events':>13}  SM MHz")
    for (gpu, model, backend), g in sorted(groups.items()):
        widths = [hi - lo for _, (lo, hi) in g["floors"]]
        widest = max(g["floors"], key=lambda f: f[1][1] - f[1][0]) if g["floors"] else None
        off = sum(1 for _, (lo, hi) in g["floors"] if lo > 1 or hi < 1)
        ev = f"{100 * sum(g['events']) / len(g['events']):.0f}%" if g["events"] else "-"
        mhz = f"{min(g['mhz'])}-{max(g['mhz'])}" if g["mhz"] else "-"
        med = f"±{50 * statistics.median(widths):.1f}% ({len(widths)} floors)" if widths else "not measured"
        wide = f"[{widest[1][0]:.3f}, {widest[1][1]:.3f}] {widest[0]}" if widest else "-"
        print(f"{gpu:<6}{model:<18}{backend:<16}{len(g['studies']):>8}{len(g['measured']):>9}{len(g['failed']):>7}"
              f"{len(g['tuned']) if g['confirmed'] else '-':>6}  {med:<26}{wide:<18}{off:>8}{ev:>13}  {mhz}")
    print("\nconfirmed gains (paired rounds against vLLM's default; the floor is the same study's default vs itself):")
    for name, speedup, ci, floor, changed in sorted(gains, key=lambda x: (x[0].model, x[0].backend, x[0].label)):
        fl = f"[{floor[0]:.3f}, {floor[1]:.3f}]" if floor else "not measured"
        what = " ".join(f"{k}={v}" for k, v in sorted(changed.items())) or "(same settings, another build)"
        print(f"  {name.model:<18}{name.backend:<16}{name.label:<20} x{speedup:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"
              f"  floor {fl}  {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
