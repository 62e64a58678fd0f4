#!/usr/bin/env python3
"""Per shape and backend, vLLM's default against the best recorded config of a sweep: a map of where to tune.

Reads sweep files (as ``--runner replay:PATH`` does) and prints, for every (TP, shape, backend): the default
config's median, the best recorded median, what the best changes, and the ratio; ``FAILS`` where no config ran.
One recording per config: the best of many noisy medians is biased low, so these are leads for a study (which
confirms in paired rounds), not gains.

    python bench/sweep_summary.py results/sweeps/h100/deepseek-v3-tp1-long.jsonl results/sweeps/h100/deepseek-v3-tp8-long.jsonl
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from mla_tune import batch_spec
from mla_tune.space import format_config
from mla_tune.vllm_adapters import recorded_adapter
from mla_tune.recordings import read_sweep


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sweeps", nargs="+", type=Path)
    args = ap.parse_args()
    rows: dict[tuple, list[dict]] = defaultdict(list)
    versions = set()
    for path in args.sweeps:
        header, records = read_sweep(path)
        env = header["environment"]
        versions.add(str(env["vllm"]))
        print(f"# {path}: {env['gpu']['name']}, vLLM {env['vllm']}, torch {env['torch']}, recorded {header['date']}")
        for r in records:
            rows[(r["model"]["tp"], r["shape"], r["backend"])].append(r)
    if len({recorded_adapter(v).family for v in versions}) > 1:
        print(f"sweeps of several vLLM families ({', '.join(sorted(versions))}): summarize each apart", file=sys.stderr)
        return 2
    adapter = recorded_adapter(next(iter(versions), None))
    spaces = {b: adapter.search_space(b) for b in {k[2] for k in rows}}
    print(f"{'tp':>3} {'shape':<10} {'backend':<15} {'default ms':>11} {'best ms':>9} {'ratio':>6}  best changes")

    def order(key: tuple) -> tuple:
        shape = batch_spec.parse(key[1])
        return key[0], shape.max_kv_len, len(shape.requests), shape.num_tokens, key[2]

    for tp, spec, backend in sorted(rows, key=order):
        recs = rows[(tp, spec, backend)]
        ok = [r for r in recs if r["status"] == "ok"]
        if not ok:
            print(f"{tp:>3} {spec:<10} {backend:<15} {'FAILS':>11}  ({len(recs)} configs: "
                  f"{recs[0]['message'][:70]})")
            continue
        med = {id(r): statistics.median(r["samples_ms"]) for r in ok}
        best = min(ok, key=lambda r: med[id(r)])
        default = spaces[backend].default_config(batch_spec.parse(spec))  # as resolved for this shape
        dflt = next((r for r in ok if r["config"] == default), None)
        changes = {k: v for k, v in best["config"].items() if default.get(k) != v}
        d = f"{med[id(dflt)]:.4g}" if dflt else "-"
        ratio = f"{med[id(dflt)] / med[id(best)]:.3f}" if dflt else "-"
        print(f"{tp:>3} {spec:<10} {backend:<15} {d:>11} {med[id(best)]:>9.4g} {ratio:>6}  "
              f"{format_config(changes) if changes else '(the default)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
