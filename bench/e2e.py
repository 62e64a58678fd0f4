#!/usr/bin/env python3
"""End to end: vLLM's own offline engine, decode step time with mla-tune's plugin off and on (GPU only).

One run (``run``) starts ``vllm.LLM`` in this process on one GPU with a DeepSeek-V3-shaped model (dummy weights, no
tokenizer, dense MLPs: ``first_k_dense_replace`` = layers), full CUDA graphs for decode (FULL_DECODE_ONLY, no
torch.compile), then for each phase ``B x C``: adds B requests of C-token prompts, steps until all of them have
their first token (prefill done), and times ``--steps`` engine steps while all B decode. The variant (vLLM's
defaults, a global attention setting, or a profile through MLA_TUNE_PROFILE) is the only difference between runs.

``drive`` runs the variants crossed over the GPUs (each variant once on each GPU, variants of a round side by side,
one process per GPU) and writes one JSON with every step time and the plugin's log lines.

    PYTHONPATH=src:$KIT python3 bench/e2e.py drive --backend FLASH_ATTN_MLA --gpus 0,1 \
        --variant default: --variant cap1:attention={"flash_attn_max_num_splits_for_cuda_graph":1} \
        --variant profile:profile=results/h200/profile.yaml --phases 8x4096,64x4096,256x4096 -o e2e.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEADS, KV_LORA, ROPE, NOPE, V = 128, 512, 64, 128, 128  # DeepSeek-V3 MLA at TP1


def model_dir(layers: int, hidden: int, intermediate: int) -> str:
    """A config.json for DeepseekV3ForCausalLM: DeepSeek-V3's attention dims; every layer dense (no MoE kernels)."""
    path = tempfile.mkdtemp(prefix="mla-tune-e2e-")
    cfg = {"architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "torch_dtype": "bfloat16",
           "vocab_size": 129280, "hidden_size": hidden, "intermediate_size": intermediate,
           "moe_intermediate_size": 2048, "num_hidden_layers": layers, "first_k_dense_replace": layers,
           "num_attention_heads": HEADS, "num_key_value_heads": HEADS, "q_lora_rank": 1536,
           "kv_lora_rank": KV_LORA, "qk_nope_head_dim": NOPE, "qk_rope_head_dim": ROPE, "v_head_dim": V,
           "n_routed_experts": 256, "n_shared_experts": 1, "num_experts_per_tok": 8, "n_group": 8, "topk_group": 4,
           "routed_scaling_factor": 2.5, "norm_topk_prob": True, "scoring_func": "sigmoid", "topk_method": "noaux_tc",
           "max_position_embeddings": 163840, "rms_norm_eps": 1e-6, "rope_theta": 10000, "bos_token_id": 0,
           "eos_token_id": 1, "tie_word_embeddings": False}
    Path(path, "config.json").write_text(json.dumps(cfg))
    return path


def run(args: argparse.Namespace) -> dict:
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine in this process: steps are timed here
    if args.profile:
        os.environ["MLA_TUNE_PROFILE"] = args.profile
    else:
        os.environ.pop("MLA_TUNE_PROFILE", None)
    import torch
    from vllm import LLM, SamplingParams

    phases = [tuple(int(x) for x in p.split("x")) for p in args.phases.split(",")]
    # Requests prefilled first keep decoding while later ones prefill, so each must be allowed enough tokens to be
    # still running when the last one has its first token (else the timed batch is smaller than B).
    budget = args.warmup + args.steps + args.prefill_steps_bound
    max_len = max(c for _, c in phases) + budget + 8
    attention = {"backend": args.backend, **json.loads(args.attention or "{}")}
    t0 = time.perf_counter()
    llm = LLM(model=model_dir(args.layers, args.hidden, args.intermediate), load_format="dummy",
              skip_tokenizer_init=True, attention_config=attention, enable_prefix_caching=False,
              compilation_config={"mode": 0, "cudagraph_mode": "FULL_DECODE_ONLY",
                                  "cudagraph_capture_sizes": [1, 2, 4, 8, 16, 32, 64, 128, 256]},
              max_model_len=max_len, max_num_seqs=max(b for b, _ in phases), max_num_batched_tokens=16384,
              gpu_memory_utilization=0.88, seed=0)
    start_s = time.perf_counter() - t0
    engine = llm.llm_engine
    gen = torch.Generator().manual_seed(args.seed)
    out = {"backend": args.backend, "attention_config": attention, "profile": args.profile or None,
           "layers": args.layers, "hidden": args.hidden, "intermediate": args.intermediate,
           "gpu": torch.cuda.get_device_name(0), "engine_start_s": round(start_s, 1), "phases": []}
    import vllm

    out["vllm"] = vllm.__version__
    out["torch"] = torch.__version__
    rid = 0
    for batch, context in phases:
        params = SamplingParams(max_tokens=budget, ignore_eos=True, detokenize=False)
        ids = []
        for _ in range(batch):
            prompt = torch.randint(2, 120000, (context,), generator=gen).tolist()
            engine.add_request(str(rid), {"prompt_token_ids": prompt}, params)
            ids.append(str(rid))
            rid += 1
        started, t_prefill = set(), time.perf_counter()
        while len(started) < batch:
            for o in engine.step():
                if o.outputs and o.outputs[0].token_ids:
                    started.add(o.request_id)
        prefill_s = time.perf_counter() - t_prefill
        for _ in range(args.warmup):
            engine.step()
        times, sizes = [], set()
        for _ in range(args.steps):
            t = time.perf_counter()
            outs = engine.step()
            times.append((time.perf_counter() - t) * 1e3)
            sizes.add(len(outs))
        # every timed step must decode all B requests (the report refuses a phase where one did not)
        running = engine.get_num_unfinished_requests()
        engine.abort_request(ids)
        while engine.has_unfinished_requests():
            engine.step()
        out["phases"].append({"batch": batch, "context": context, "prefill_s": round(prefill_s, 2),
                              "outputs_per_step": sorted(sizes), "unfinished_after": running,
                              "step_ms": [round(x, 4) for x in times],
                              "median_ms": round(statistics.median(times), 4)})
        print(f"{args.label} B={batch} C={context}: median step {statistics.median(times):.3f} ms "
              f"(prefill {prefill_s:.1f} s)", flush=True)
    from mla_tune.serving import plugin  # the engine runs in this process: its plugin's decisions are here

    out["plugin_log"] = list(plugin.EVENTS)
    return out


def drive(args: argparse.Namespace) -> None:
    """Every variant once on every GPU; in round r, GPU g runs variant (r + g) mod n (a Latin square)."""
    gpus = args.gpus.split(",")
    variants = [v.split(":", 1) for v in args.variant]
    results, t0 = [], time.perf_counter()
    for r in range(len(variants)):
        procs = []
        for g, gpu in enumerate(gpus):
            label, spec = variants[(r + g) % len(variants)]
            kind, _, value = spec.partition("=")
            out = Path(tempfile.mkdtemp()) / "run.json"
            cmd = [sys.executable, __file__, "run", "--backend", args.backend, "--phases", args.phases,
                   "--layers", str(args.layers), "--hidden", str(args.hidden), "--intermediate", str(args.intermediate),
                   "--steps", str(args.steps), "--warmup", str(args.warmup), "--label", label, "-o", str(out)]
            cmd += ["--profile", value] if kind == "profile" else ["--attention", value] if kind == "attention" else []
            env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpu}
            procs.append((label, gpu, out, subprocess.Popen(cmd, env=env)))
        for label, gpu, out, p in procs:
            rc = p.wait()
            if rc != 0 or not out.exists():
                print(f"variant {label} on GPU {gpu} failed (exit {rc})", flush=True)
                continue
            res = json.loads(out.read_text())
            results.append({"variant": label, "gpu_index": gpu, "round": r, **res})
        print(f"round {r + 1}/{len(variants)} done after {time.perf_counter() - t0:.0f} s", flush=True)
        # after every round, so that a drive cut short by a time limit keeps its finished rounds
        Path(args.output).write_text(json.dumps({"runs": results, "args": vars(args)}, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["run", "drive"])
    ap.add_argument("--backend", required=True)
    ap.add_argument("--phases", default="8x4096,64x4096,256x4096", help="BATCHxCONTEXT,...")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=7168)
    ap.add_argument("--intermediate", type=int, default=18432)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prefill-steps-bound", type=int, default=400,
                    help="engine steps the prefill of a phase may take (B*C / max_num_batched_tokens and more)")
    ap.add_argument("--label", default="run")
    ap.add_argument("--profile", default="")
    ap.add_argument("--attention", default="")
    ap.add_argument("--gpus", default="0")
    ap.add_argument("--variant", action="append", default=[], help="LABEL:[profile=PATH|attention=JSON]")
    ap.add_argument("-o", "--output", required=True)
    args = ap.parse_args()
    if args.mode == "run":
        Path(args.output).write_text(json.dumps(run(args)))
    else:
        drive(args)


if __name__ == "__main__":
    main()
