#!/usr/bin/env bash
# The H200 evidence of one device session (2x H200), after both GPU kits are installed (see README, "H200"):
#   vLLM 0.20.0 in /opt/mla-kit/site, vLLM 0.26.0 in /opt/mla-kit26/site.
# Runs from a clean export of one commit (.gpurun/tree.tar, made by `bench/h200_session.sh pack` here) so that
# uncommitted edits never reach a measurement; mla-tune itself is installed from the wheel built from it.
#
#   bench/h200_session.sh pack          (here)   export HEAD and build its wheel into .gpurun/
#   bench/h200_session.sh tests         (GPU)    gpu tests on 0.20 (GPU 0) and 0.26 (GPU 1), a 0.26 study,
#                                                the H100 tables verified here, interleaved sweeps
#   bench/h200_session.sh e2e-fa|e2e-triton (GPU) vLLM's engine, plugin off and on, crossed over both GPUs
#   bench/h200_session.sh serve         (GPU)    `vllm serve` with MLA_TUNE_PROFILE: the plugin's log lines and one
#                                                completion (needs the serve kit in /opt/mla-kit/site:
#                                                bench/kit-requirements-vllm-0.20.0-serve.txt; not yet run)
# Results go to $OUT as tar files (at most 8 files come back).
set -uo pipefail
cmd=${1:?usage: h200_session.sh pack|tests|e2e-fa|e2e-triton}

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
serve)
  MD=$(python3 -c "import sys; sys.path.insert(0, 'bench'); import e2e; print(e2e.model_dir(4, 2048, 4096))")
  MLA_TUNE_PROFILE=$PWD/results/h200/profile-FLASH_ATTN_MLA.yaml CUDA_VISIBLE_DEVICES=0 PYTHONPATH=/tmp/mt:$K20 \
    VLLM_LOGGING_LEVEL=INFO lim 400 python3 -m vllm.entrypoints.cli.main serve "$MD" --load-format dummy \
    --skip-tokenizer-init --attention-config '{"backend": "FLASH_ATTN_MLA"}' --max-model-len 8192 --port 8000 \
    --compilation-config '{"mode": 0, "cudagraph_mode": "FULL_DECODE_ONLY"}' > logs/serve.log 2>&1 &
  server=$!
  for _ in $(seq 240); do curl -sf localhost:8000/health >/dev/null && break; sleep 1; done
  curl -s localhost:8000/v1/completions -H 'Content-Type: application/json' \
    -d "{\"model\": \"$MD\", \"prompt\": [11, 22, 33, 44, 55, 66, 77, 88], \"max_tokens\": 16}" | tee logs/completion.json
  kill $server; wait $server
  grep -E "mla-tune|Traceback|Error" logs/serve.log | head -n 40
  tar -czf "$OUT/serve.tgz" logs ;;
esac
