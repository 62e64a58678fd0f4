#!/usr/bin/env python3
"""GPU seconds a study spent timing kernels, from its journal: its trials and its confirmation (no GPU needed).

Per study: the device time its recordings timed, summed over its trials (each sample's per-call time x the layer
calls it ran; a paired trial also times vLLM's default beside the config, as many samples, at the default's median)
and over its confirmation (stored since paired recordings as ``gpu_s``; before, the rounds' sample counts x their
medians x the layers of the baseline's recording). Warm-up, graph capture and the host's own time are not in it:
this is the timed part, the one that paired recording doubles per trial.

    python bench/study_gpu_seconds.py results/h100/paired/cool.journal results/h200/adaptive/fa-decode_4k-adaptive.journal
"""

from __future__ import annotations

import argparse
import sys

import optuna

from mla_tune import api
from mla_tune.records import Confirmation, TrialResult
from mla_tune.storage.urls import open_storage


def trial_s(r: TrialResult) -> float:
    m = r.measurement
    if m is None or not m.samples_ms:
        return 0.0
    layers = int((m.details or {}).get("layers", 1))
    own = sum(m.samples_ms) * layers
    ref = m.paired.reference_ms * len(m.samples_ms) * layers if m.paired is not None else 0.0
    return (own + ref) / 1e3


def confirmation_s(conf: Confirmation | None, layers: int) -> float:
    if conf is None:
        return 0.0
    if conf.gpu_s is not None:
        return float(conf.gpu_s)
    total = 0.0
    for c in conf.candidates:
        if c.status == "ok" and c.samples and c.default_ms and c.best_ms:
            # each candidate's rounds timed the default twice (A A' B) and the candidate once
            total += (2 * c.samples["default"] * c.default_ms + c.samples["best"] * c.best_ms) * layers
    return total / 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("journals", nargs="+")
    args = ap.parse_args()
    print(f"{'journal':<48} {'study':<44} {'trials':>6} {'trial s':>8} {'confirm s':>9} {'rounds':>6}")
    for path in args.journals:
        store = open_storage(api.parse_storage(path), create=False)
        totals = [0.0, 0.0]
        for s in sorted(store.get_all_studies(), key=lambda s: s.study_name):
            study = optuna.load_study(study_name=s.study_name, storage=store)
            results = [TrialResult.from_trial(t) for t in study.get_trials(deepcopy=False)]
            fresh = [r for r in results if r.fresh and r.status == "ok"]
            t_s = sum(trial_s(r) for r in fresh)
            base = next((r for r in fresh if r.role == "baseline" and r.measurement is not None), None)
            layers = int(((base.measurement.details or {}) if base else {}).get("layers", 1))
            conf = Confirmation.of_study(study.user_attrs)
            c_s = confirmation_s(conf, layers)
            totals[0] += t_s
            totals[1] += c_s
            print(f"{path[-48:]:<48} {s.study_name[-44:]:<44} {len(fresh):>6} {t_s:>8.2f} {c_s:>9.2f} "
                  f"{conf.rounds if conf else '-':>6}")
        print(f"{path[-48:]:<48} {'total':<44} {'':>6} {totals[0]:>8.2f} {totals[1]:>9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
