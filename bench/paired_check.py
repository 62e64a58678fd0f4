#!/usr/bin/env python3
"""An interleaved measurement of FLASH_ATTN_MLA's split cap made apart from any study (GPU only).

The paired issue asks that a study's confirmed speedups agree within 2% with an independent interleaved measurement
of the same session. This one goes to the vLLM runner directly, with none of the study's machinery (no sampler, no
trials, no confirmation rounds, no judge): per shape, ``--recordings`` recordings of vLLM's default, each cap and the
default built again, sample by sample (``Runner.measure_paired``), with ``--blocks`` blocks each (4x the study's
minimum). It prints, per shape and cap, the geometric mean of the per-recording speedups over the default with a 95%
Student-t interval over the recordings, the default against itself the same way, the share of clock readings under
a clock event, and the GPU seconds; ``-o`` writes every recording's numbers as JSON.

    PYTHONPATH=src:$KIT python3 bench/paired_check.py --shapes 64q1s4k,256q1s4k --caps 1,16 -o check.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from mla_tune import batch_spec  # noqa: E402
from mla_tune.models import get_model  # noqa: E402
from mla_tune.runners.vllm import VllmRunner  # noqa: E402
from mla_tune.vllm_adapters import default_adapter  # noqa: E402
from mla_tune.stats import t95  # noqa: E402
from mla_tune.types import Case, freeze_params  # noqa: E402


def geomean_ci(xs: list[float]) -> tuple[float, float, float]:
    logs = [math.log(x) for x in xs]
    m = statistics.fmean(logs)
    half = t95(len(logs) - 1) * statistics.stdev(logs) / math.sqrt(len(logs)) if len(logs) > 1 else math.inf
    return math.exp(m), math.exp(m - half), math.exp(m + half)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="FLASH_ATTN_MLA")
    ap.add_argument("--shapes", default="q1s4k,8q1s4k,32q1s4k,64q1s4k,128q1s4k,256q1s4k")
    ap.add_argument("--caps", default="1", help="max_num_splits values to compare with vLLM's default")
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--recordings", type=int, default=6)
    ap.add_argument("--blocks", type=int, default=40)
    ap.add_argument("-o", "--output", required=True)
    args = ap.parse_args()
    dims = get_model("deepseek-v3", args.tp)
    space = default_adapter().search_space(args.backend)
    caps = [int(c) for c in args.caps.split(",")]
    out: dict = {"shapes": {}}
    with VllmRunner(pair_min_blocks=args.blocks, pair_max_blocks=max(300, args.blocks)) as runner:
        env = runner.environment()
        out["environment"] = env.as_dict()
        print(f"{env.gpu_name}, vLLM {env.vllm}, torch {env.torch}, runner vllm (measure_paired direct)", flush=True)
        print(f"{'shape':<10} {'arm':<12} {'speedup':>8} {'95% CI over recordings':>24} {'rec.':>4} "
              f"{'clock ev.':>9} {'GPU s':>6}")
        for spec in args.shapes.split(","):
            shape = batch_spec.parse(spec)
            default = space.default_config(shape)
            arms = [("default", default)] + [(f"cap {c}", default | {"max_num_splits": c}) for c in caps
                                             if c != default.get("max_num_splits")] + [("default again", default)]
            cases = [Case(args.backend, shape, dims, freeze_params(cfg)) for _, cfg in arms]
            rows: dict[str, list[float]] = {name: [] for name, _ in arms[1:]}
            recs, t0 = [], time.perf_counter()
            for _ in range(args.recordings):
                pm = runner.measure_paired(cases)
                if not pm.ok:
                    print(f"{spec}: failed: {[m.message for m in pm.arms if not m.ok][:1]}", flush=True)
                    break
                d = dict(pm.details)
                recs.append({"reference_ms": pm.pairs[0].reference_ms, "details": d,
                             "arms": {name: {"speedup": p.speedup, "ci": p.ci, "median_ms": m.median_ms}
                                      for (name, _), p, m in zip(arms, pm.pairs, pm.arms)}})
                for (name, _), p in zip(arms[1:], pm.pairs[1:]):
                    rows[name].append(p.speedup)
            out["shapes"][spec] = {"recordings": recs, "wall_s": time.perf_counter() - t0}
            Path(args.output).write_text(json.dumps(out, indent=1, sort_keys=True))  # a cut run keeps its shapes
            if not recs:
                continue
            share = statistics.fmean(float(r["details"].get("clock_event_share", "nan")) for r in recs)
            gpu = sum(float(r["details"].get("gpu_s", 0)) for r in recs)
            for name, xs in rows.items():
                g, lo, hi = geomean_ci(xs)
                out["shapes"][spec][name] = {"speedup": g, "ci95": [lo, hi], "recordings": len(xs)}
                print(f"{spec:<10} {name:<12} {g:>8.4f} {f'[{lo:.4f}, {hi:.4f}]':>24} {len(xs):>4} "
                      f"{share:>9.2f} {gpu:>6.1f}", flush=True)
    Path(args.output).write_text(json.dumps(out, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
