"""A test double of the ``vllm`` executable for bench-serve's CPU tests (never a stand-in for a measurement).

``vllm serve MODEL --port P ...`` answers ``/health`` and ``/fake/state`` on 127.0.0.1 and prints what mla-tune's
plugin prints when ``MLA_TUNE_PROFILE`` is set; ``vllm bench serve ...`` asks the server which variant it is and
writes a result JSON shaped like vLLM's; ``vllm --version`` prints a version. What goes wrong is chosen by the
environment: ``FAKE_VLLM_SERVE`` = fail | hang | no-plugin | not-applied | disabled-later, ``FAKE_VLLM_BENCH`` =
fail | partial | no-result, ``FAKE_VLLM_BENCH_FAIL_AT`` = N (the N-th client run fails); ``FAKE_VLLM_DIR`` counts
server starts and client runs and keeps the servers' pids.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def _arg(args: list[str], name: str, default: str | None = None) -> str | None:
    return args[args.index(name) + 1] if name in args else default


def _count(what: str) -> int:
    d = os.environ.get("FAKE_VLLM_DIR")
    if not d:
        return 0
    path = Path(d) / what
    n = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(n))
    return n


def serve(args: list[str]) -> None:
    port = int(_arg(args, "--port", "8000"))
    mode = os.environ.get("FAKE_VLLM_SERVE", "")
    _count("serve")
    if os.environ.get("FAKE_VLLM_DIR"):
        with open(Path(os.environ["FAKE_VLLM_DIR"]) / "pids", "a") as f:
            f.write(f"{os.getpid()}\n")
    print(f"INFO fake vllm serve {args[0]} on port {port}", flush=True)
    if mode == "fail":
        print("ERROR torch.OutOfMemoryError: CUDA out of memory (fake)", flush=True)
        sys.exit(1)
    if mode == "hang":
        time.sleep(3600)
    profile = os.environ.get("MLA_TUNE_PROFILE")
    info = os.environ.get("VLLM_LOGGING_LEVEL", "INFO") in ("INFO", "DEBUG")  # as vLLM's logger filters
    if profile and mode != "no-plugin" and info:
        print(f"INFO [plugin.py:144] mla-tune: plugin loaded with profile {profile} (vLLM 0.20; patched builders)",
              flush=True)
        if mode == "not-applied":
            print(f"WARNING [plugin.py:67] mla-tune: profile {profile} not applied: it was measured for another "
                  "engine (gpu: profile H100, engine H200); vLLM's defaults are kept", flush=True)
        elif info:
            print(f"INFO [plugin.py:70] mla-tune: profile {profile} applied to FLASH_ATTN_MLA on H100 (vLLM 0.20): "
                  "max_num_splits per decode tokens", flush=True)
    state = {"profile": bool(profile) and mode not in ("no-plugin", "not-applied"),
             "attention": json.loads(_arg(args, "--attention-config", "{}"))}
    asked = [0]

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            if self.path == "/health":
                body = b""
            elif self.path == "/fake/state":
                asked[0] += 1
                if mode == "disabled-later" and asked[0] == 1 and profile:
                    print(f"WARNING mla-tune: profile {profile} disabled at decode (RuntimeError: fake); vLLM's "
                          "defaults are kept", flush=True)
                body = json.dumps(state).encode()
            else:
                self.send_response(404)
                self.end_headers()
                return
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    httpd.serve_forever()


def bench(args: list[str]) -> None:
    n = _count("bench")
    if os.environ.get("FAKE_VLLM_BENCH") == "fail" or str(n) == os.environ.get("FAKE_VLLM_BENCH_FAIL_AT"):
        print("Traceback (most recent call last):\nValueError: the client failed (fake)", flush=True)
        sys.exit(2)
    port, c = int(_arg(args, "--port")), int(_arg(args, "--max-concurrency"))
    prompts, input_len = int(_arg(args, "--num-prompts")), int(_arg(args, "--random-input-len"))
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/fake/state", timeout=5) as r:
        state = json.loads(r.read())
    # per-token time: the profile gains at the large batches only, cap 1 everywhere loses at the small ones
    tpot = 8.0 + 0.04 * c
    gain = float(os.environ.get("FAKE_VLLM_GAIN", "1.05"))
    if state["profile"] and c >= 64:
        tpot /= gain
    if "flash_attn_max_num_splits_for_cuda_graph" in state["attention"]:
        tpot /= gain if c >= 64 else 0.9
    tpot *= 1 + random.Random(n).uniform(-0.002, 0.002)  # deterministic: the n-th client run of a test
    partial = os.environ.get("FAKE_VLLM_BENCH") == "partial"
    result = {"completed": prompts - partial, "failed": int(partial), "max_concurrency": c,
              "output_throughput": c * 1000.0 / tpot, "mean_tpot_ms": tpot, "median_tpot_ms": tpot,
              "median_itl_ms": tpot, "p99_itl_ms": tpot * 1.5, "median_ttft_ms": 50 + input_len * 0.01}
    print(f"Output token throughput (tok/s): {result['output_throughput']:.2f}", flush=True)
    if os.environ.get("FAKE_VLLM_BENCH") != "no-result":
        out = Path(_arg(args, "--result-dir")) / _arg(args, "--result-filename")
        out.write_text(json.dumps(result))


def main() -> None:
    args = sys.argv[1:]
    if args == ["--version"]:
        print("0.20.0")
    elif args[:1] == ["serve"]:
        serve(args[1:])
    elif args[:2] == ["bench", "serve"]:
        bench(args[2:])
    else:
        print(f"fake vllm: unknown command {args}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
