#!/usr/bin/env bash
# Every GPU measurement behind BENCHMARKS.md, in the groups we run per machine lease (each < 10 min).
#   benchmarks/gpu_suite.sh inference   # 1 GPU: parity tests on CUDA, backbones vs timm/HF, heads
#   benchmarks/gpu_suite.sh pipeline    # 1 GPU: node path, offline tool, pretraining, Gram, distillation
#   benchmarks/gpu_suite.sh multi       # 2-4 GPUs: FSDP2 scaling, distillation with student subgroups
#   benchmarks/gpu_suite.sh heads2      # 1 GPU: CUDA pipeline tests, node + offline after the head work, Gram
#   benchmarks/gpu_suite.sh round2      # 1 GPU: session-2 node/offline/backbone figures (max-autotune row: see BENCHMARKS)
#   benchmarks/gpu_suite.sh offline2    # 1 GPU: offline tool vs bare engine, ViT-S/B/L (issue 7), ~4 min
# Results go to $OUT (default out/gpu): one JSON/markdown per benchmark inside results.tgz, plus suite.log.
# Needs the repository on PYTHONPATH (set here); rosbags for the offline benchmark (wheels in .gpu/wheels).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
SUITE="${1:?inference | pipeline | multi | heads2 | offline2 | round2}"
OUT="${OUT:-out/gpu}"
PY="${PY:-python3}"
R="$OUT/$SUITE"
mkdir -p "$R"
LOG="$OUT/suite_$SUITE.log"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
say() { echo "[gpu_suite $(date -u +%H:%M:%S)] $*" | tee -a "$LOG"; }
step() {  # step NAME SECONDS CMD...
  local name="$1" t="$2"; shift 2
  say "$name: $*"
  timeout "$t" "$@" >"$R/$name.log" 2>&1
  say "$name: exit $?"
  tail -n 25 "$R/$name.log" >>"$LOG"
}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$PY" -c 'import torch, sys; print("python", sys.version.split()[0], "torch", torch.__version__, "gpus", torch.cuda.device_count())'
} | tee -a "$LOG"
[[ -d .gpu/wheels ]] && "$PY" -m pip install -q --no-index --find-links .gpu/wheels rosbags >>"$LOG" 2>&1

case "$SUITE" in
inference)
  step parity 120 "$PY" -m pytest -q -p no:cacheprovider tests/test_models_timm_parity.py tests/test_heads_gpu.py \
    tests/test_runtime_engine.py tests/test_models_hf_parity.py
  step backbones 330 "$PY" benchmarks/bench_gpu_backbones.py --device cuda --out "$R/backbones" --profile --budget-s 290
  step heads 90 "$PY" benchmarks/bench_heads.py --device cuda --out "$R/heads_cuda.json"
  ;;
pipeline)
  step node 75 "$PY" benchmarks/bench_node.py --device cuda --precision fp16 --weights random:vits16 \
    --resolution 480x640 --seconds 20 --out "$R/node_cuda.json"
  step offline 90 "$PY" benchmarks/bench_offline.py --device cuda --weights random:vits16 --precision fp16 \
    --resolution 448x448 --batch-size 32 --frames 512 --decode-workers 8 --out "$R/offline_cuda.json"
  step pretrain 120 "$PY" benchmarks/bench_pretrain.py --device cuda --mode throughput --out "$R/pretrain_1gpu.json"
  step gram 150 "$PY" benchmarks/bench_pretrain.py --device cuda --mode gram --gram-start 300 --gram-iters 150 \
    --out "$R/pretrain_gram.json"
  step distill 90 "$PY" benchmarks/bench_distill.py --device cuda --steps 10 --repeats 2 --out "$R/distill_1gpu.json"
  ;;
multi)
  n=$("$PY" -c 'import torch; print(torch.cuda.device_count())')
  step fsdp2 150 torchrun --standalone --nproc_per_node 2 benchmarks/bench_pretrain.py --device cuda --mode fsdp \
    --out "$R/pretrain_fsdp2.json"
  if [[ "$n" -ge 4 ]]; then
    step fsdp4 150 torchrun --standalone --nproc_per_node 4 benchmarks/bench_pretrain.py --device cuda --mode fsdp \
      --out "$R/pretrain_fsdp4.json"
  fi
  step distill2 120 torchrun --standalone --nproc_per_node 2 benchmarks/bench_distill.py --device cuda \
    --students vits16,convnext_tiny --steps 10 --out "$R/distill_2gpu.json"
  ;;
heads2)
  step cuda_tests 80 "$PY" -m pytest -q -p no:cacheprovider tests/test_pipeline_core.py tests/test_heads_tokencut.py \
    tests/test_heads_gpu.py
  step node 70 "$PY" benchmarks/bench_node.py --device cuda --precision fp16 --weights random:vits16 \
    --resolution 480x640 --seconds 20 --out "$R/node_cuda.json"
  step offline 80 "$PY" benchmarks/bench_offline.py --device cuda --weights random:vits16 --precision fp16 \
    --resolution 448x448 --batch-size 32 --frames 512 --decode-workers 8 --out "$R/offline_cuda.json"
  step offline_vitl 100 "$PY" benchmarks/bench_offline.py --device cuda --weights random:vitl16 --precision fp16 \
    --resolution 448x448 --batch-size 32 --frames 256 --decode-workers 8 --out "$R/offline_cuda_vitl.json"
  step gram 210 "$PY" benchmarks/bench_pretrain.py --device cuda --mode gram --gram-start 150 --gram-iters 100 \
    --out "$R/pretrain_gram.json"
  ;;
offline2)  # issue 7 throughput: ViT-S/B/L in one process (shared input bag), stage timings in the JSON
  step offline2 330 "$PY" benchmarks/bench_offline.py --device cuda --weights random:vits16,random:vitb16,random:vitl16 \
    --precision fp16 --resolution 448x448 --batch-size 32 --frames 512 --repeats 2 --out "$R/offline2_cuda.json"
  ;;
round2)  # session-2 figures (issues 5/6/7 on one GPU, ~9 min): CUDA tests, node, pipeline profile, offline, backbones
  step cuda_tests 90 "$PY" -m pytest -q -p no:cacheprovider tests/test_heads_gpu.py tests/test_pipeline_core.py \
    tests/test_runtime_vit_fast.py
  step node 90 "$PY" benchmarks/bench_node.py --device cuda --precision fp16 --weights random:vits16 \
    --resolution 480x640 --seconds 30 --out "$R/node_cuda.json"
  step profile 90 "$PY" benchmarks/profile_pipeline.py --device cuda --precision fp16 --frames 40 --out "$R/prof.json"
  step offline 200 "$PY" benchmarks/bench_offline.py --device cuda --weights random:vits16,random:vitb16,random:vitl16 \
    --precision fp16 --resolution 448x448 --batch-size 32 --frames 512 --repeats 2 --out "$R/offline_cuda.json"
  step backbones 300 "$PY" benchmarks/bench_gpu_backbones.py --device cuda --out "$R/backbones" --budget-s 280 \
    --plan vitb16:timm:eager:bf16,vitb16:ours:compiledef+cudagraphs+gelu:bf16,vitb16:timm:eager:fp16,vitb16:hf:eager:bf16,vitb16:ours:compiledef+cudagraphs+gelu:fp16,vits16:timm:eager:bf16,vits16:timm:eager:fp16,vits16:hf:eager:bf16,vits16:ours:cudagraphs:bf16,vits16:ours:compiledef+cudagraphs+gelu:fp16
  ;;
*) say "unknown suite $SUITE"; exit 2 ;;
esac
tar -czf "$OUT/results_$SUITE.tgz" -C "$OUT" "$SUITE"
say "done"
