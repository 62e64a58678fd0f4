#!/usr/bin/env python3
"""The end-to-end table: decode step time per variant and phase, speedup over vLLM's defaults, and the gain the
kernel table predicts (no GPU needed: reads what ``bench/e2e.py`` wrote on the GPU machine).

    python bench/e2e_report.py results/h200/e2e-triton.json --table results/h200/run1/tables/TRITON_MLA-deepseek-v3-tp1.yaml
    python bench/e2e_report.py results/h200/e2e-fa.log --table results/h200/run1/tables/FLASH_ATTN_MLA-deepseek-v3-tp1.yaml

Per GPU, a variant's step time is the median of its timed steps; a speedup is the geometric mean over the GPUs of
default/variant (each variant ran once on each GPU, crossed). Predicted: the attention time per layer that the
kernel table measured for the shape, default vs the variant's value, times the layers, taken off the measured
default step. ``--mix 8:1,256:1`` prints a traffic that spends those shares of its steps at those batch sizes.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import statistics
from collections import defaultdict
from pathlib import Path

import yaml

LINE = re.compile(r"^(\w+) B=(\d+) C=(\d+): median step ([\d.]+) ms")


def load_steps(path: Path) -> dict[tuple[str, int, int], dict[str, list[float]]]:
    """(variant, batch, context) -> GPU -> every timed step (JSON drives only)."""
    out: dict[tuple[str, int, int], dict[str, list[float]]] = defaultdict(dict)
    if path.suffix == ".json":
        for run in json.loads(path.read_text())["runs"]:
            for p in run["phases"]:
                out[(run["variant"], p["batch"], p["context"])][str(run["gpu_index"])] = p["step_ms"]
    return out


def bootstrap_ci(default: dict[str, list[float]], variant: dict[str, list[float]], n: int = 2000,
                 seed: int = 0) -> tuple[float, float] | None:
    """95% interval of the speedup (geometric mean over GPUs of median default / median variant step), resampling
    the steps of each run: the spread within runs, not the run-to-run spread (one run per variant and GPU)."""
    gpus = sorted(set(default) & set(variant))
    if not gpus:
        return None
    rng = random.Random(seed)

    def med(xs: list[float]) -> float:
        return statistics.median(rng.choice(xs) for _ in xs)

    draws = sorted(math.exp(sum(math.log(med(default[g]) / med(variant[g])) for g in gpus) / len(gpus))
                   for _ in range(n))
    return draws[int(0.025 * n)], draws[int(0.975 * n) - 1]


def load_runs(path: Path) -> dict[tuple[str, int, int], list[float]]:
    """(variant, batch, context) -> the per-GPU median step times."""
    out: dict[tuple[str, int, int], list[float]] = defaultdict(list)
    if path.suffix == ".json":
        for run in json.loads(path.read_text())["runs"]:
            for p in run["phases"]:
                if p.get("outputs_per_step", [p["batch"]]) != [p["batch"]]:
                    raise SystemExit(f"{path}: {run['variant']} {p['batch']}x{p['context']}: a timed step did not "
                                     "decode every request; the phase is not what its label says")
                out[(run["variant"], p["batch"], p["context"])].append(p["median_ms"])
    else:
        for line in path.read_text().splitlines():
            m = LINE.match(line)
            if m:
                out[(m[1], int(m[2]), int(m[3]))].append(float(m[4]))
    return out


def kernel_ms(table: dict, batch: int, context: int, value: object, knob: str) -> tuple[float, float] | None:
    """(default ms, ms with ``value``) per layer call from the table entry of ``{batch}q1s{context}``."""
    spec = f"{'' if batch == 1 else batch}q1s{context // 1024}k"
    entry = next((e for e in table["entries"] if e.get("shape") == spec), None)
    if entry is None:
        return None
    default = entry["latency_ms"]["default"]
    if entry.get("tuned") and entry["params"].get(knob) == value:
        return default, entry["latency_ms"]["best"]
    if entry["default_params"].get(knob) == value:
        return default, default
    for p in entry.get("landscape") or ():
        if p["params"] == {**entry["default_params"], knob: value}:
            return default, p["trial_ms"]
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", type=Path)
    ap.add_argument("--table", type=Path, required=True)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--mix", default="8:1,256:1")
    ap.add_argument("--profile", type=Path, help="the profile the runs served (default: profile-BACKEND.yaml two "
                    "folders above the table, where the H200 runs keep it)")
    args = ap.parse_args()
    runs = load_runs(args.runs)
    steps = load_steps(args.runs)
    table = yaml.safe_load(args.table.read_text())
    knob = "max_num_splits" if table["backend"] == "FLASH_ATTN_MLA" else "num_kv_splits"
    path = args.profile or Path(args.table.parent.parent, f"profile-{table['backend']}.yaml")
    profile = yaml.safe_load(path.read_text())
    points = profile["per_batch"][knob]
    variants = sorted({v for v, _, _ in runs}, key=lambda v: (v != "default", v))
    phases = sorted({(b, c) for _, b, c in runs})
    print(f"| phase | {' | '.join(variants)} | " + " | ".join(f"{v} vs default" for v in variants[1:])
          + " | predicted (profile) | attention share |")
    print("|" + " --- |" * (1 + 2 * len(variants) + 1))
    mean = {k: sum(v) / len(v) for k, v in runs.items()}
    for b, c in phases:
        cells = [" / ".join(f"{x:.2f}" for x in runs.get((v, b, c), [])) or "-" for v in variants]
        ratios = []
        for v in variants[1:]:
            d, x = runs.get(("default", b, c), []), runs.get((v, b, c), [])
            n = min(len(d), len(x))
            text = f"x{math.exp(sum(math.log(d[i] / x[i]) for i in range(n)) / n):.3f}" if n else "-"
            ci = bootstrap_ci(steps.get(("default", b, c), {}), steps.get((v, b, c), {}))
            ratios.append(text + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""))
        value = min(points, key=lambda p: (abs(p["tokens"] - b), p["tokens"]))["value"]
        k = kernel_ms(table, b, c, value, knob)
        step = mean.get(("default", b, c))
        if k and step:
            saved = args.layers * (k[0] - k[1])
            pred, share = f"x{step / (step - saved):.3f} ({knob} {value})", f"{args.layers * k[0] / step:.0%}"
        else:
            pred, share = "not in the table", "-"
        print(f"| {b}x{c} | {' | '.join(cells)} | {' | '.join(ratios)} | {pred} | {share} |")
    mix = [(int(b), float(w)) for b, w in (x.split(":") for x in args.mix.split(","))]
    ctx = 4096
    missing = sorted({b for b, _ in mix if any((v, b, ctx) not in mean for v in variants)})
    if missing:
        print(f"\ntraffic {args.mix}: not computed, no phase {', '.join(f'{b}x{ctx}' for b in missing)} in this run")
        return
    total = {v: sum(w * mean.get((v, b, ctx), math.nan) for b, w in mix) / sum(w for _, w in mix) for v in variants}
    print(f"\ntraffic {args.mix} (share of steps per batch size, context {ctx}): " +
          ", ".join(f"{v} {t:.2f} ms/step" for v, t in total.items()) + "; " +
          ", ".join(f"{a} vs {b} x{total[b] / total[a]:.3f}" for a in variants if a != "default"
                    for b in variants if b != a))


if __name__ == "__main__":
    main()
