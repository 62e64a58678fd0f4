#!/usr/bin/env python3
"""A study that starts on a hot GPU: ``--heat-s`` of sustained bf16 matrix products, then at once the study (GPU).

The paired issue asks that the default-budget study give the same table on a GPU that has run under load for two
minutes (power-capped, clocks down) as on a cool one. The study's runner (and its worker, with torch and vLLM
imported) starts first, so that nothing idles between the load and the first trial; the load runs in this process,
and the clocks NVML reads at its end are printed. Then ``api.run_study`` with the study's defaults, as
``mla-tune study`` runs it, and its table is exported.

    PYTHONPATH=src:$KIT python3 bench/hot_study.py --heat-s 120 --storage hot.journal --export hot.yaml
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from mla_tune import api  # noqa: E402
from mla_tune.runners.vllm import VllmRunner  # noqa: E402


def heat(seconds: float) -> str:
    import torch

    a = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    end, n = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        for _ in range(20):
            a = a @ b * 0.01 + a
        torch.cuda.synchronize()
        n += 20
    try:
        import pynvml

        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
        reasons = pynvml.nvmlDeviceGetCurrentClocksEventReasons(h)
        text = (f"SM {pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM)} MHz, "
                f"{pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU)} C, power "
                f"{pynvml.nvmlDeviceGetPowerUsage(h) / 1000:.0f} W, event reasons 0x{reasons:x}")
    except Exception as exc:  # noqa: BLE001 - the reading is a detail
        text = f"no NVML reading ({exc})"
    del a, b
    torch.cuda.empty_cache()
    return f"{n} 8192^3 bf16 products in {seconds:.0f} s; at the end: {text}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--heat-s", type=float, default=120.0)
    ap.add_argument("--backend", default="FLASH_ATTN_MLA")
    ap.add_argument("--workload", default="decode_4k")
    ap.add_argument("--storage", required=True)
    ap.add_argument("--export", required=True)
    args = ap.parse_args()
    runner = VllmRunner()
    env = runner.environment()  # the worker is up, torch and vLLM imported, before the load starts
    print(f"{env.gpu_name}, vLLM {env.vllm}, torch {env.torch}", flush=True)
    print("heat:", heat(args.heat_s), flush=True)
    t0 = time.perf_counter()
    out = api.run_study(backend=args.backend, workload=args.workload, storage=args.storage, runner=runner)
    print(f"study: {time.perf_counter() - t0:.0f} s", flush=True)
    names = [s.name for s in out.summaries]
    path, _ = api.export_table(Path(args.export), storage=args.storage, backend=args.backend, names=names)
    print(f"wrote {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
