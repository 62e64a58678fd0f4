#!/usr/bin/env bash
# The paired-recording evidence of one device session (one H100 or H200, vLLM 0.20.0 GPU kit in /opt/mla-kit/site).
# Runs from a clean export of one commit (.gpurun/tree.tar, made by `bench/h100_session.sh pack` here), so that
# uncommitted edits never reach a measurement; mla-tune itself is installed from the wheel built from it.
#
#   bench/h100_session.sh pack                  (here)  export HEAD and build its wheel into .gpurun/
#   bench/h100_session.sh STEP [STEP ...]       (GPU)   run the steps in order, within the call's time (BUDGET_S)
#
# Steps (each writes logs/ under /tmp/w, kept across calls on one machine, and is tarred into $OUT):
#   tests   the GPU tests of the runner (contract with paired recordings included) and the adapters
#   check   bench/paired_check.py: FLASH_ATTN_MLA split cap 1 (and 16, 64) against vLLM's default at decode_4k,
#           straight through the runner, 6 recordings x 40 blocks per shape (the study's independent reference)
#   cool    `mla-tune study --backend FLASH_ATTN_MLA --workload decode_4k` with its defaults, then export
#   hot     bench/hot_study.py: 120 s of sustained bf16 matrix products, then the same study into its own journal
#   verify  `mla-tune deploy` of the cool study's table on decode_4k traffic, then `mla-tune verify` of the profile
#   sweep   `mla-tune sweep` of FLASH_ATTN_MLA over decode_4k, 2 rounds of pairs (the new landscapes for replay)
#   e2e     bench/e2e.py: vLLM's engine (16 dense DeepSeek-V3-width layers) with vLLM's default, the deployed
#           profile and cap 1 set globally, at 8 and 256 requests of 3k context
#   prove   `mla-tune bench-serve` of the verify step's profile on `vllm serve` (16 dense layers, dummy weights, a
#           word-level tokenizer: bench/serve_model.py) at 8, 64 and 256 requests of 2000 + 128 tokens, one wave
#           each, 3 crossed-over repeats; needs the serve kit (bench/kit-requirements-vllm-0.20.0-serve.txt) in
#           /opt/mla-kit/site. About 15 min: the same step in the next call resumes where the last one was cut
set -uo pipefail
[[ ${1:-} ]] || { sed -n 2,20p "$0"; exit 2; }

if [[ $1 == pack ]]; then  # .gpurun is ignored (.git/info/exclude): carry it in the calls that run steps
  rm -rf .gpurun && mkdir -p .gpurun
  git archive HEAD -o .gpurun/tree.tar ':!results'  # the working tree travels anyway; results/ is not needed twice
  tmp=$(mktemp -d) && tar -xf .gpurun/tree.tar -C "$tmp" && cp README.md "$tmp"/ &&
    python -m pip wheel -q --no-deps -w .gpurun "$tmp"
  rm -rf "$tmp"; git rev-parse HEAD > .gpurun/commit; ls -la .gpurun; exit 0
fi

W=/tmp/w; K20=/opt/mla-kit/site; START=$SECONDS; COMMIT=$(cat .gpurun/commit)
mkdir -p $W /tmp/mt && tar -xf .gpurun/tree.tar -C $W
if [[ $(cat /tmp/mt/.installed 2>/dev/null) != "$COMMIT" ]]; then  # a re-packed commit replaces the install
  rm -rf /tmp/mt && mkdir -p /tmp/mt
  python3 -m pip install -q --no-index --no-deps --target /tmp/mt .gpurun/*.whl > $W/pip.log 2>&1 &&
    echo "$COMMIT" > /tmp/mt/.installed || { cat $W/pip.log; exit 1; }
fi
[[ -f .gpurun/cool.yaml && ! -f $W/logs/cool.yaml ]] && mkdir -p $W/logs && cp .gpurun/cool.yaml $W/logs/  # a new machine
export VLLM_LOGGING_LEVEL=WARNING PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false PYTHONPATH=/tmp/mt:$K20
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
cd $W && mkdir -p logs studies sweeps
echo "commit $COMMIT" | tee logs/commit.txt
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu,power.draw,power.limit \
  --format=csv | tee -a logs/gpus.csv
DEADLINE=$((START + ${BUDGET_S:-555}))
# lim SECONDS CMD...: CMD under `timeout -s INT` (a study stops cleanly and keeps its trials), cut to what is left
lim() { local left=$((DEADLINE - SECONDS)) l=$1; ((left < l)) && l=$left; ((l < 10)) && { echo "skipped: no time"; return 124; }
        timeout -s INT -k 30 "$l" "${@:2}"; }
mt() { python3 -m mla_tune.cli "$@"; }
STUDY=(--backend FLASH_ATTN_MLA --workload decode_4k --tp 1)

for step in "$@"; do
  echo "== $step at $((SECONDS - START)) s"
  case $step in
  tests)
    lim 240 python3 -m pytest -q -p no:cacheprovider -m "gpu or not gpu" tests/test_runner_vllm.py \
      tests/test_vllm_adapters.py > logs/pytest-gpu.log 2>&1
    echo "rc $?" >> logs/pytest-gpu.log
    tail -n 4 logs/pytest-gpu.log ;;
  check)
    lim 150 python3 bench/paired_check.py --caps 1,16,64 --recordings 5 -o logs/paired_check.json > logs/paired_check.log 2>&1
    echo "rc $?" >> logs/paired_check.log; cat logs/paired_check.log ;;
  cool)
    rm -f logs/cool.yaml logs/FALLBACK  # a table of this study or none: never one left from before
    lim 300 python3 -m mla_tune.cli study "${STUDY[@]}" --storage studies/cool.journal --export logs/cool.yaml \
      > logs/study-cool.log 2>&1; echo "rc $?" >> logs/study-cool.log; tail -n 22 logs/study-cool.log ;;
  hot)
    lim 330 python3 bench/hot_study.py --heat-s 120 --storage studies/hot.journal --export logs/hot.yaml \
      > logs/study-hot.log 2>&1; echo "rc $?" >> logs/study-hot.log
    grep -v "^\[I " logs/study-hot.log | tail -n 8; mt show logs/hot.yaml 2>&1 | tail -n 12 ;;
  verify)
    rm -f logs/FALLBACK
    [[ -f logs/cool.yaml ]] || mt export -o logs/cool.yaml --backend FLASH_ATTN_MLA --tp 1 --storage studies/cool.journal
    if [[ ! -f logs/cool.yaml && -f .gpurun/fallback-cool.yaml ]]; then
      # no table from this session's study: deploy the one an earlier session's study exported (said in the log)
      cp .gpurun/fallback-cool.yaml logs/cool.yaml && echo "FALLBACK: cool.yaml of an earlier session" | tee logs/FALLBACK
    fi
    mt deploy logs/cool.yaml --workload decode_4k -o logs/profile.yaml > logs/deploy.log 2>&1; cat logs/deploy.log
    lim 200 python3 -m mla_tune.cli verify logs/profile.yaml > logs/verify.log 2>&1; echo "rc $?" >> logs/verify.log
    cat logs/verify.log ;;
  sweep)
    lim 260 python3 -m mla_tune.cli sweep "${STUDY[@]}" --rounds 2 -o sweeps/FLASH_ATTN_MLA-deepseek-v3-tp1.jsonl \
      > logs/sweep.log 2>&1; echo "rc $?" >> logs/sweep.log; tail -n 3 logs/sweep.log ;;
  e2e)
    lim 420 python3 bench/e2e.py drive --gpus 0 --layers 16 --hidden 7168 --intermediate 18432 --steps 24 --warmup 4 \
      --backend FLASH_ATTN_MLA --phases 8x3072,256x3072 --variant 'default:' \
      --variant 'profile:profile=logs/profile.yaml' \
      --variant 'cap1:attention={"flash_attn_max_num_splits_for_cuda_graph": 1}' -o logs/e2e.json > logs/e2e.log 2>&1
    echo "rc $?" >> logs/e2e.log; tail -n 12 logs/e2e.log ;;
  prove)
    [[ -f logs/profile.yaml ]] || { echo "prove needs logs/profile.yaml: run the verify step first"; continue; }
    [[ -d /tmp/serve-model ]] || python3 bench/serve_model.py /tmp/serve-model > logs/serve-model.log 2>&1
    printf '#!/bin/sh\nexec python3 -m vllm.entrypoints.cli.main "$@"\n' > /tmp/vllm && chmod +x /tmp/vllm
    VLLM_LOGGING_LEVEL=INFO lim 560 python3 -m mla_tune.cli bench-serve logs/profile.yaml --model /tmp/serve-model \
      -o logs/bench-serve --vllm-bin /tmp/vllm --concurrency 8,64,256 --repeats 3 --waves 1 --input-len 2000 \
      --output-len 128 -- --load-format dummy --max-model-len 4096 --max-num-seqs 256 --gpu-memory-utilization 0.85 \
      --compilation-config '{"mode": 0, "cudagraph_mode": "FULL_DECODE_ONLY"}' > logs/bench-serve.log 2>&1
    echo "rc $?" >> logs/bench-serve.log; tail -n 30 logs/bench-serve.log ;;
  *) echo "unknown step $step" ;;
  esac
  tar -czf "$OUT/$step.tgz" logs $( [[ $step == cool || $step == hot ]] && echo studies/$step.journal ) \
    $( [[ $step == sweep ]] && echo sweeps ) 2>/dev/null
done
echo "== done at $((SECONDS - START)) s"
