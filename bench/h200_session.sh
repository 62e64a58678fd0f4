#!/usr/bin/env bash
# The H200 evidence of one device session (2x H200), after both GPU kits are installed (see results/h200/README.md):
#   vLLM 0.20.0 in /opt/mla-kit/site, vLLM 0.26.0 in /opt/mla-kit26/site.
# Runs from a clean export of one commit (.gpurun/tree.tar, made by `bench/h200_session.sh pack` here) so that
# uncommitted edits never reach a measurement; mla-tune itself is installed from the wheel built from it.
#
#   bench/h200_session.sh pack          (here)   export HEAD and build its wheel into .gpurun/
#   bench/h200_session.sh tests         (GPU)    gpu tests on 0.20 (GPU 0) and 0.26 (GPU 1), a 0.26 study,
#                                                the H100 tables verified here, interleaved sweeps
#   bench/h200_session.sh e2e-fa|e2e-triton (GPU) vLLM's engine, plugin off and on, crossed over both GPUs
#   bench/h200_session.sh serve-tests   (GPU)    `vllm serve` with MLA_TUNE_PROFILE (a matching profile on GPU 0, a
#                                                mismatched one on GPU 1): the plugin's log lines and one completion
#                                                each; the 0.20 GPU tests; the sweeps left over (needs the serve kit
#                                                in /opt/mla-kit/site: bench/kit-requirements-vllm-0.20.0-serve.txt)
#   bench/h200_session.sh studies "1 8" (GPU)    studies of FLASHMLA, TRITON_MLA, FLASH_ATTN_MLA over the evidence
#                                                workloads at the TPs given, a worker per GPU; re-running resumes
#   bench/h200_session.sh twins         (GPU)    FLASH_ATTN_MLA 64q1s4k and 256q1s4k at TP1: the candidates told apart
#                                                by what ran (no twin of the default, no two twins)
#   bench/h200_session.sh adaptive      (GPU)    the 0.20 GPU tests, then FLASH_ATTN_MLA decode_4k at TP1 studied
#                                                afresh: its confirmations with the rounds extended to the floor
# Results go to $OUT as tar files (at most 8 files come back).
set -uo pipefail
cmd=${1:?usage: h200_session.sh pack|tests|e2e-fa|e2e-triton|serve-tests|twins|adaptive|studies TPS}

if [[ $cmd == pack ]]; then
  rm -rf .gpurun && mkdir -p .gpurun
  git archive HEAD -o .gpurun/tree.tar
  tmp=$(mktemp -d) && tar -xf .gpurun/tree.tar -C "$tmp" && python -m pip wheel -q --no-deps -w .gpurun "$tmp"
  rm -rf "$tmp"; git rev-parse HEAD > .gpurun/commit; ls -la .gpurun; exit 0
fi

W=/tmp/w; K20=/opt/mla-kit/site; K26=/opt/mla-kit26/site
mkdir -p $W /tmp/mt && tar -xf .gpurun/tree.tar -C $W
python3 -m pip install -q --no-index --no-deps --target /tmp/mt .gpurun/*.whl 2>&1 | grep -v "root" || true
export VLLM_LOGGING_LEVEL=WARNING PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
cd $W && mkdir -p logs sweeps
echo "commit $(cat "$OLDPWD/.gpurun/commit")" | tee logs/commit.txt
nvidia-smi --query-gpu=index,name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv | tee logs/gpus.csv
DEADLINE=$((SECONDS + ${BUDGET_S:-560}))  # the call's 10 minutes, less the packing of what comes back
# lim SECONDS CMD...: CMD under `timeout`, cut to what is left of the deadline (each step, not the whole call)
lim() { local left=$((DEADLINE - SECONDS)) l=$1; ((left < l)) && l=$left; ((l < 5)) && { echo "skipped: no time"; return 124; }; timeout "$l" "${@:2}"; }
v20() { CUDA_VISIBLE_DEVICES=$1 PYTHONPATH=/tmp/mt:$K20 lim "${@:2}"; }
v26() { CUDA_VISIBLE_DEVICES=$1 PYTHONPATH=/tmp/mt:$K26 lim "${@:2}"; }
GPUS=$(nvidia-smi --query-gpu=index --format=csv,noheader | paste -sd, -)  # "0" or "0,1": a worker per GPU
GPU_TESTS="tests/test_runner_vllm.py tests/test_runner_fake.py tests/test_vllm_adapters.py"

case $cmd in
tests)
  (  # GPU 0, vLLM 0.20: tests, then the FLASH_ATTN_MLA sweep (300 configs x 3 rounds per workload)
    v20 0 200 python3 -m pytest -q -p no:cacheprovider -m "gpu or not gpu" $GPU_TESTS > logs/pytest-gpu-020.log 2>&1
    echo "0.20 tests rc $?" >> logs/pytest-gpu-020.log
    v20 0 330 python3 -m mla_tune.cli sweep --backend FLASH_ATTN_MLA --workload decode_4k --rounds 3 \
      -o sweeps/FLASH_ATTN_MLA-deepseek-v3-tp1.jsonl > logs/sweep-fa.log 2>&1; echo "rc $?" >> logs/sweep-fa.log
  ) &
  (  # GPU 1, vLLM 0.26: tests and a short study; then vLLM 0.20: the H100 tables verified on this H200, sweeps
    v26 1 200 python3 -m pytest -q -p no:cacheprovider -m "gpu or not gpu" $GPU_TESTS > logs/pytest-gpu-026.log 2>&1
    echo "0.26 tests rc $?" >> logs/pytest-gpu-026.log
    v26 1 120 python3 -m mla_tune.cli study --backend FLASH_ATTN_MLA --workload spec:64q1s4k --trials 8 \
      --storage logs/study-026.journal --export logs/FLASH_ATTN_MLA-026.yaml > logs/study-026.log 2>&1
    echo "rc $?" >> logs/study-026.log
    for t in FLASH_ATTN_MLA-deepseek-v3-tp1 TRITON_MLA-deepseek-v3-tp1 FLASHMLA-deepseek-v3-tp1; do
      v20 1 100 python3 -m mla_tune.cli verify results/h100/tables/$t.yaml > logs/verify-h100-$t.log 2>&1
      echo "rc $?" >> logs/verify-h100-$t.log
    done
    v20 1 150 python3 -m mla_tune.cli sweep --backend TRITON_MLA --backend FLASHMLA --workload decode_4k \
      --rounds 3 -o sweeps/TRITON_FLASHMLA-deepseek-v3-tp1.jsonl > logs/sweep-triton-flashmla.log 2>&1
    echo "rc $?" >> logs/sweep-triton-flashmla.log
  ) &
  wait
  tar -czf "$OUT/tests.tgz" logs sweeps; tail -n 3 logs/*.log ;;
e2e-fa)
  PYTHONPATH=/tmp/mt:$K20 lim 560 python3 bench/e2e.py drive --gpus 0,1 --layers 32 --hidden 2048 --intermediate 4096 --steps 30 \
    --warmup 6 --backend FLASH_ATTN_MLA --phases 8x4096,64x4096,128x4096,256x4096 --variant 'default:' \
    --variant 'cap1:attention={"flash_attn_max_num_splits_for_cuda_graph": 1}' \
    --variant 'profile:profile=results/h200/profile-FLASH_ATTN_MLA.yaml' -o "$OUT/e2e-fa.json" 2>&1 | tail -n 30 ;;
e2e-triton)
  PYTHONPATH=/tmp/mt:$K20 lim 560 python3 bench/e2e.py drive --gpus 0,1 --layers 32 --hidden 2048 --intermediate 4096 --steps 30 \
    --warmup 6 --backend TRITON_MLA --phases 64x4096,128x4096,32x32768 --variant 'default:' \
    --variant 'profile:profile=results/h200/profile-TRITON_MLA.yaml' -o "$OUT/e2e-triton.json" 2>&1 | tail -n 30 ;;
serve-tests)
  # GPU 0: `vllm serve` with the FLASH_ATTN_MLA profile (the plugin's log lines, one completion), then FLASHMLA's
  # spec/mixed/prefill sweep (cut at the last session's time limit). GPU 1: `vllm serve` with a TRITON_MLA profile on
  # a FLASH_ATTN_MLA server (the plugin must refuse it and keep vLLM's defaults), the GPU tests, then
  # FLASH_ATTN_MLA's decode_64k sweep. Needs the serve kit in /opt/mla-kit/site.
  MD=$(python3 -c "import sys; sys.path.insert(0, 'bench'); import e2e; print(e2e.model_dir(4, 2048, 4096))")
  serve() {  # serve GPU PORT PROFILE LOG: start, wait for health, one completion, stop
    MLA_TUNE_PROFILE=$3 CUDA_VISIBLE_DEVICES=$1 PYTHONPATH=/tmp/mt:$K20 VLLM_LOGGING_LEVEL=INFO \
      timeout -s INT 300 python3 -m vllm.entrypoints.cli.main serve "$MD" --load-format dummy --skip-tokenizer-init \
      --attention-config '{"backend": "FLASH_ATTN_MLA"}' --max-model-len 8192 --port $2 --gpu-memory-utilization 0.85 \
      --compilation-config '{"mode": 0, "cudagraph_mode": "FULL_DECODE_ONLY"}' > "$4" 2>&1 &
    local server=$! t0=$SECONDS
    python3 - "$2" "$MD" "$4.completion.json" <<'PY'
import json, sys, time, urllib.request
port, model, out = sys.argv[1:]
base = f"http://127.0.0.1:{port}"
for _ in range(280):
    try:
        urllib.request.urlopen(base + "/health", timeout=2); break
    except Exception:
        time.sleep(1)
body = json.dumps({"model": model, "prompt": [11, 22, 33, 44, 55, 66, 77, 88], "max_tokens": 16}).encode()
req = urllib.request.Request(base + "/v1/completions", body, {"Content-Type": "application/json"})
try:
    text = urllib.request.urlopen(req, timeout=60).read().decode()
except Exception as e:
    text = json.dumps({"error": repr(e)})
open(out, "w").write(text); print(text[:400])
PY
    echo "serve on GPU $1: answered after $((SECONDS - t0)) s" > "$4.timing"  # not into the log: the server writes it at its own offset
    kill -INT $server; wait $server
  }
  (
    serve 0 8000 $PWD/results/h200/profile-FLASH_ATTN_MLA.yaml logs/serve.log
    v20 0 300 python3 -m mla_tune.cli sweep --backend FLASHMLA --workload spec_decode --workload mixed \
      --workload prefill_4k --rounds 3 -o sweeps/FLASHMLA-deepseek-v3-tp1-spec_mixed_prefill.jsonl \
      > logs/sweep-flashmla-other.log 2>&1; echo "rc $?" >> logs/sweep-flashmla-other.log
  ) &
  (
    serve 1 8001 $PWD/results/h200/profile-TRITON_MLA.yaml logs/serve-mismatch.log
    v20 1 200 python3 -m pytest -q -p no:cacheprovider -m "gpu or not gpu" $GPU_TESTS > logs/pytest-gpu-020.log 2>&1
    echo "0.20 tests rc $?" >> logs/pytest-gpu-020.log
    v20 1 400 python3 -m mla_tune.cli sweep --backend FLASH_ATTN_MLA --workload decode_64k --rounds 3 \
      -o sweeps/FLASH_ATTN_MLA-deepseek-v3-tp1-decode_64k.jsonl > logs/sweep-fa-64k.log 2>&1
    echo "rc $?" >> logs/sweep-fa-64k.log
  ) &
  wait
  grep -hE "mla.tune|Traceback|Error" logs/serve*.log | head -n 40
  tar -czf "$OUT/serve-tests.tgz" logs sweeps ;;
twins)
  mkdir -p studies
  left=$((DEADLINE - SECONDS - 10)); ((left < 30)) && { echo "skipped: no time"; exit 1; }
  PYTHONPATH=/tmp/mt:$K20 timeout -s INT -k 20 $left python3 -m mla_tune.cli study \
    --backend FLASH_ATTN_MLA --workload spec:64q1s4k --workload spec:256q1s4k --tp 1 \
    --storage studies/fa-twins.journal > logs/study-twins.log 2>&1
  echo "rc $?" >> logs/study-twins.log; tail -n 20 logs/study-twins.log
  tar -cf - logs studies/fa-twins.journal | xz -T0 -6 | split -b 15M - "$OUT/twins.tar.xz." ;;
adaptive)
  v20 0 200 python3 -m pytest -q -p no:cacheprovider -m "gpu or not gpu" $GPU_TESTS > logs/pytest-gpu-020.log 2>&1
  echo "0.20 tests rc $?" >> logs/pytest-gpu-020.log; tail -n 3 logs/pytest-gpu-020.log
  mkdir -p studies
  left=$((DEADLINE - SECONDS - 30))
  PYTHONPATH=/tmp/mt:$K20 timeout -s INT -k 60 $left python3 -m mla_tune.cli study --backend FLASH_ATTN_MLA \
    --workload decode_4k --tp 1 --storage studies/fa-decode_4k-adaptive.journal \
    --export logs/FLASH_ATTN_MLA-tp1-decode_4k-adaptive.yaml > logs/study-adaptive.log 2>&1
  echo "rc $?" >> logs/study-adaptive.log; tail -n 25 logs/study-adaptive.log
  tar -cf - logs studies/fa-decode_4k-adaptive.journal | xz -T0 -6 | split -b 15M - "$OUT/adaptive.tar.xz." ;;
studies)
  # Every backend x workload of the H200 evidence at the TPs given, one worker per GPU on one journal (kept in
  # /tmp/w/studies across calls on this machine: the same command resumes). Stopped by SIGINT before the call's
  # limit, so that the workers record their current trial.
  TPS=(); for t in ${2:-1}; do TPS+=(--tp "$t"); done
  # A fresh machine starts from the committed journal, so that the same command resumes what an earlier session
  # left (on 2026-11-30: the TP8 confirmations and FLASH_ATTN_MLA at TP8)
  mkdir -p studies; [[ -f studies/h200.journal ]] || cp results/h200/studies.journal studies/h200.journal
  left=$((DEADLINE - SECONDS - 30))
  PYTHONPATH=/tmp/mt:$K20 timeout -s INT -k 75 $left python3 -m mla_tune.cli study --backend FLASHMLA \
    --backend TRITON_MLA --backend FLASH_ATTN_MLA --workload decode_4k --workload spec_decode --workload mixed \
    --workload prefill_4k --workload decode_1k --workload decode_16k --workload decode_64k "${TPS[@]}" \
    --gpus "$GPUS" --storage studies/h200.journal > logs/studies-tp${2// /_}.log 2>&1
  echo "rc $?" >> logs/studies-tp${2// /_}.log
  tail -n 40 logs/studies-tp${2// /_}.log
  # The journal and logs only (the plots attached as artifacts are rebuilt from it), in parts under $OUT's 16 MB cap
  tar -cf - logs studies/h200.journal | xz -T0 -6 | split -b 15M - "$OUT/studies.tar.xz." ;;
esac
