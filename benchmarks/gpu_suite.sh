#!/usr/bin/env bash
# Every GPU measurement behind BENCHMARKS.md, in the groups we run per machine lease (each < 10 min).
#   benchmarks/gpu_suite.sh inference   # 1 GPU: parity tests on CUDA, backbones vs timm/HF, heads
#   benchmarks/gpu_suite.sh pipeline    # 1 GPU: node path, offline tool, pretraining, Gram, distillation
#   benchmarks/gpu_suite.sh multi       # 2-4 GPUs: FSDP2 scaling, distillation with student subgroups
#   benchmarks/gpu_suite.sh heads2      # 1 GPU: CUDA pipeline tests, node + offline after the head work, Gram
#   benchmarks/gpu_suite.sh round2      # 1 GPU: session-2 node/offline/backbone figures (max-autotune row: see BENCHMARKS)
#   benchmarks/gpu_suite.sh offline2    # 1 GPU: offline tool vs bare engine, ViT-S/B/L (issue 7), ~4 min
#   benchmarks/gpu_suite.sh offline_spy # 1 GPU: the offline tool alone under py-spy (GIL holder, all threads)
#   benchmarks/gpu_suite.sh offline3    # 1 GPU: offline tool on 2048-frame inputs, ViT-S/B/L + write/GIL A/B
#   benchmarks/gpu_suite.sh offline4    # 1 GPU: offline tool after the thread-pool fix, ViT-S/B/L + trace
#   benchmarks/gpu_suite.sh tune5       # 1 GPU: GIL switch interval (offline, ViT-B); node thread pools
#   benchmarks/gpu_suite.sh offline5    # 1 GPU: offline tool on 6144-frame inputs, ViT-S/B/L (issue 7 figures)
#   benchmarks/gpu_suite.sh node3       # 1 GPU: node stream (20 s, 30 s) + pipeline profile, per-output latency
#   benchmarks/gpu_suite.sh node4       # 1 GPU: CUDA head tests, TokenCut squarings table, then node3's runs
#   benchmarks/gpu_suite.sh node5       # 1 GPU: CUDA tests, squarings table, node under py-spy (GIL), node 20 s
#   benchmarks/gpu_suite.sh node6       # 1 GPU: node5 after the TokenCut host trims + an OpenBLAS 1-thread A/B
#   benchmarks/gpu_suite.sh node7       # 1 GPU: node with blas_threads auto vs library default, node 30 s, profile
#   benchmarks/gpu_suite.sh node8       # 1 GPU: node, serialized outputs vs message objects (A/B/A), 30 s, profile
#   benchmarks/gpu_suite.sh node9       # 1 GPU: node at max_objects 4, 1 (20 s + 30 s) and 2
#   benchmarks/gpu_suite.sh node10      # 1 GPU: node with the shipped defaults (20 s, 30 s), max_objects 4, profile
#   benchmarks/gpu_suite.sh node11      # 1 GPU: CUDA head tests, node 20 s + 30 s, profile (sync-free matching)
#   benchmarks/gpu_suite.sh node12      # 1 GPU: CUDA tests, node 20 s + 30 s, profile (matching in its own thread)
#   benchmarks/gpu_suite.sh node_spy    # 1 GPU: the node (shipped defaults) under py-spy: GIL holders, all threads
#   benchmarks/gpu_suite.sh offline_tmpfs # 1 GPU: offline ViT-S/B with the bags in /dev/shm (disk vs host limit)
# Results go to $OUT (default out/gpu): one JSON/markdown per benchmark inside results.tgz, plus suite.log.
# Needs the repository on PYTHONPATH (set here); rosbags for the offline benchmark (wheels in .gpu/wheels).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
SUITE="${1:?inference | pipeline | multi | heads2 | offline2 | round2 | offline_spy | offline3 | offline4 | tune5 | offline5 | node3 | node4 | node5 | node6 | node7 | node8 | node9 | node10 | node11 | node12 | node_spy | offline_tmpfs}"
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
offline_spy)  # issue 7 diagnosis: the tool alone (CLI, 1024 JPEG frames) with per-run stage timings, and
  # py-spy (wheel in .gpu/wheels) samples of the GIL holder and of every active thread
  "$PY" -m pip install -q --no-index --find-links .gpu/wheels py-spy >>"$LOG" 2>&1
  W="$R/work"; mkdir -p "$W"
  "$PY" -c "import sys; sys.path.insert(0, 'benchmarks'); from pathlib import Path; import bench_offline as b; \
b.make_input(Path('$W/in'), 1024, 640, 480, 'jpeg')"
  tool() {  # tool NAME WEIGHTS [extra args...]
    local name="$1" w="$2"; shift 2
    step "$name" 120 "$PY" -m dinov3_ros.cli process "$W/in" --out "$W/out_$name" --overwrite --no-progress \
      --weights "$w" --precision fp16 --resolution 448x448 --batch-size 32 --device cuda:0 \
      --outputs features_pca,depth "$@"
  }
  tool s_base random:vits16
  tool b_base random:vitb16
  spy=$("$PY" -c 'import shutil,sys,os; print(shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable),"py-spy"))')
  SPY="$spy record -r 250 -t -f raw --nonblocking"
  step s_spy_gil 150 $SPY -g -o "$R/spy_s_gil.txt" -- "$PY" -m dinov3_ros.cli process "$W/in" --out "$W/out_sg" \
    --overwrite --no-progress --weights random:vits16 --precision fp16 --resolution 448x448 --batch-size 32 \
    --device cuda:0 --outputs features_pca,depth
  step s_spy_all 150 $SPY -o "$R/spy_s_all.txt" -- "$PY" -m dinov3_ros.cli process "$W/in" --out "$W/out_sa" \
    --overwrite --no-progress --weights random:vits16 --precision fp16 --resolution 448x448 --batch-size 32 \
    --device cuda:0 --outputs features_pca,depth
  tool s_dec4 random:vits16 --decode-workers 4
  tool s_dec15 random:vits16 --decode-workers 15
  tool s_b64 random:vits16 --batch-size 64
  tool s_depth random:vits16 --outputs depth
  rm -rf "$W"
  ;;
offline3)  # issue 7, long inputs (fixed open/finalize costs amortised as in real jobs), A/B of the
  # write gathering and the GIL switch interval on ViT-S, then ViT-S/B/L with the defaults
  B="--device cuda --precision fp16 --resolution 448x448 --batch-size 32 --repeats 2 --rows tool,ceiling"
  step s_nogather 150 "$PY" benchmarks/bench_offline.py $B --weights random:vits16 --frames 2048 --gather-mb 0 \
    --disk-mb 2048 --out "$R/s_nogather.json"
  step s_gather 150 "$PY" benchmarks/bench_offline.py $B --weights random:vits16 --frames 2048 --out "$R/s_gather.json"
  step s_switch1 150 "$PY" benchmarks/bench_offline.py $B --weights random:vits16 --frames 2048 \
    --switch-interval-ms 1 --out "$R/s_switch1.json"
  step sbl 400 "$PY" benchmarks/bench_offline.py --device cuda --precision fp16 --resolution 448x448 \
    --batch-size 32 --repeats 2 --rows tool,ceiling,overlapped --weights random:vits16,random:vitb16,random:vitl16 \
    --frames 2048 --out "$R/sbl.json"
  ;;
offline4)  # issue 7 after the thread-pool fix (torch/OpenCV one thread on CUDA): A/B on ViT-S, then S/B/L
  B="--device cuda --precision fp16 --resolution 448x448 --batch-size 32 --repeats 2 --rows tool,ceiling"
  step s_pools_default 150 "$PY" benchmarks/bench_offline.py $B --weights random:vits16 --frames 2048 \
    --torch-threads 0 --cv-threads 16 --out "$R/s_pools_default.json"
  step sbl 420 "$PY" benchmarks/bench_offline.py --device cuda --precision fp16 --resolution 448x448 \
    --batch-size 32 --repeats 2 --rows tool,ceiling,overlapped --weights random:vits16,random:vitb16,random:vitl16 \
    --frames 2048 --disk-mb 2048 --out "$R/sbl.json"
  step prof_s 120 "$PY" benchmarks/profile_offline.py --device cuda --weights random:vits16 --precision fp16 \
    --resolution 448x448 --batch-size 32 --frames 1024 --out "$R/prof_s"
  ;;
tune5)  # GIL switch interval for the offline tool (ViT-B) and host thread pools / switch interval for the node
  B="--device cuda --precision fp16 --resolution 448x448 --batch-size 32 --repeats 2 --rows tool --frames 2048"
  for si in 0 0.5 2; do
    step "b_switch$si" 120 "$PY" benchmarks/bench_offline.py $B --weights random:vitb16 --switch-interval-ms $si \
      --out "$R/b_switch$si.json"
  done
  N="--device cuda --precision fp16 --weights random:vits16 --resolution 480x640 --seconds 20"
  step node_default 90 "$PY" benchmarks/bench_node.py $N --out "$R/node_default.json"
  step node_threads1 90 "$PY" benchmarks/bench_node.py $N --threads 1 --cv-threads 1 --out "$R/node_threads1.json"
  step node_switch1 90 "$PY" benchmarks/bench_node.py $N --threads 1 --cv-threads 1 --switch-interval-ms 1 \
    --out "$R/node_switch1.json"
  ;;
offline5)  # issue 7 final: 6144-frame inputs (a few minutes of camera, as real jobs), ViT-S/B/L, + a CUDA check
  step cuda_check 60 "$PY" -c "
import numpy as np, torch
from dinov3_ros.runtime.preprocess import Preprocessor
rng = np.random.default_rng(0)
fr = [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(32)]
pre = Preprocessor((448, 448), 16, device='cuda')
torch.set_num_threads(8); a, _ = pre(fr)
torch.set_num_threads(1); b, _ = pre(fr)
torch.cuda.synchronize(); assert torch.equal(a, b); print('cuda batch upload: serial copy path identical')"
  step sbl 480 "$PY" benchmarks/bench_offline.py --device cuda --precision fp16 --resolution 448x448 \
    --batch-size 32 --repeats 2 --rows tool,ceiling --weights random:vits16,random:vitb16,random:vitl16 \
    --frames 6144 --disk-mb 4096 --out "$R/sbl6144.json"
  ;;
node3)  # issue 6 after session 3 (outputs published when ready, debug overlay overlapped, remap): node x2 +
  # pipeline profile; per-output latency in the node JSON (latency_per_topic)
  N="--device cuda --precision fp16 --weights random:vits16 --resolution 480x640"
  step node20 90 "$PY" benchmarks/bench_node.py $N --seconds 20 --out "$R/node20.json"
  step node30 100 "$PY" benchmarks/bench_node.py $N --seconds 30 --out "$R/node30.json"
  step profile 90 "$PY" benchmarks/profile_pipeline.py --device cuda --precision fp16 --frames 40 --out "$R/prof.json"
  ;;
node4)  # issue 6, session 4: TokenCut's staged squarings (CUDA tests, squarings table) + node3
  step tests 150 "$PY" -m pytest -q -p no:cacheprovider tests/test_heads_gpu.py tests/test_heads_tokencut.py
  step tokencut 150 "$PY" benchmarks/bench_tokencut.py --device cuda --precision fp16 \
    --images .gpu/tc/rooms_480x640.npz --out "$R/tokencut.json"
  N="--device cuda --precision fp16 --weights random:vits16 --resolution 480x640"
  step node20 90 "$PY" benchmarks/bench_node.py $N --seconds 20 --out "$R/node20.json"
  step node30 100 "$PY" benchmarks/bench_node.py $N --seconds 30 --out "$R/node30.json"
  step profile 90 "$PY" benchmarks/profile_pipeline.py --device cuda --precision fp16 --frames 40 --out "$R/prof.json"
  ;;
node5)  # issue 6: graphs captured thread-locally; the node stream under py-spy (GIL holder) + clean run
  step tests 150 "$PY" -m pytest -q -p no:cacheprovider tests/test_heads_gpu.py tests/test_heads_tokencut.py
  step tokencut 120 "$PY" benchmarks/bench_tokencut.py --device cuda --precision fp16 --squarings 12,8,7 \
    --images .gpu/tc/rooms_480x640.npz --out "$R/tokencut.json"
  "$PY" -m pip install -q --no-index --find-links .gpu/wheels py-spy >>"$LOG" 2>&1
  spy=$("$PY" -c 'import shutil,sys,os; print(shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable),"py-spy"))')
  N="--device cuda --precision fp16 --weights random:vits16 --resolution 480x640"
  step node_spy 120 "$spy" record -r 500 -t -g -f raw --nonblocking -o "$R/spy_node_gil.txt" -- \
    "$PY" benchmarks/bench_node.py $N --seconds 20 --baseline-seconds 2 --out "$R/node_spy.json"
  step node20 90 "$PY" benchmarks/bench_node.py $N --seconds 20 --out "$R/node20.json"
  step profile 90 "$PY" benchmarks/profile_pipeline.py --device cuda --precision fp16 --frames 40 --out "$R/prof.json"
  ;;
node6)  # issue 6: TokenCut host work trimmed (pinned buffers, label structure); OpenBLAS 1 thread A/B; py-spy
  step tests 150 "$PY" -m pytest -q -p no:cacheprovider tests/test_heads_gpu.py tests/test_heads_tokencut.py
  step tokencut 120 "$PY" benchmarks/bench_tokencut.py --device cuda --precision fp16 --squarings 12,8,7 \
    --images .gpu/tc/rooms_480x640.npz --out "$R/tokencut.json"
  N="--device cuda --precision fp16 --weights random:vits16 --resolution 480x640"
  step node20 90 "$PY" benchmarks/bench_node.py $N --seconds 20 --out "$R/node20.json"
  step node20_blas1 90 env OPENBLAS_NUM_THREADS=1 "$PY" benchmarks/bench_node.py $N --seconds 20 --out "$R/node20_blas1.json"
  step node30 100 "$PY" benchmarks/bench_node.py $N --seconds 30 --out "$R/node30.json"
  step profile 90 "$PY" benchmarks/profile_pipeline.py --device cuda --precision fp16 --frames 40 --out "$R/prof.json"
  "$PY" -m pip install -q --no-index --find-links .gpu/wheels py-spy >>"$LOG" 2>&1
  spy=$("$PY" -c 'import shutil,sys,os; print(shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable),"py-spy"))')
  step node_spy 120 "$spy" record -r 500 -t -g -f raw --nonblocking -o "$R/spy_node_gil.txt" -- \
    "$PY" benchmarks/bench_node.py $N --seconds 20 --baseline-seconds 2 --out "$R/node_spy.json"
  ;;
node7)  # issue 6: node with OpenBLAS auto (1 thread on CUDA) vs the library default (A/B, same run)
  step tokencut 120 "$PY" benchmarks/bench_tokencut.py --device cuda --precision fp16 --squarings 12,7 \
    --images .gpu/tc/rooms_480x640.npz --out "$R/tokencut.json"
  N="--device cuda --precision fp16 --weights random:vits16 --resolution 480x640"
  step node20 90 "$PY" benchmarks/bench_node.py $N --seconds 20 --out "$R/node20.json"
  step node20_blas0 90 "$PY" benchmarks/bench_node.py $N --seconds 20 --blas-threads 0 --out "$R/node20_blas0.json"
  step node30 100 "$PY" benchmarks/bench_node.py $N --seconds 30 --out "$R/node30.json"
  step profile 90 "$PY" benchmarks/profile_pipeline.py --device cuda --precision fp16 --frames 40 --out "$R/prof.json"
  ;;
node8)  # issue 6: outputs as serialized CDR (node default) vs message objects, A/B/A in one run
  N="--device cuda --precision fp16 --weights random:vits16 --resolution 480x640"
  step node20_ser 90 "$PY" benchmarks/bench_node.py $N --seconds 20 --out "$R/node20_ser.json"
  step node20_obj 90 "$PY" benchmarks/bench_node.py $N --seconds 20 --publish-serialized 0 --out "$R/node20_obj.json"
  step node20_ser2 90 "$PY" benchmarks/bench_node.py $N --seconds 20 --out "$R/node20_ser2.json"
  step node30 100 "$PY" benchmarks/bench_node.py $N --seconds 30 --out "$R/node30.json"
  step profile 90 "$PY" benchmarks/profile_pipeline.py --device cuda --precision fp16 --frames 40 --out "$R/prof.json"
  ;;
node9)  # issue 6: the node at max_objects 4 / 1 / 2 in one run (TokenCut objects per frame vs latency)
  N="--device cuda --precision fp16 --weights random:vits16 --resolution 480x640"
  step node20_mo4 90 "$PY" benchmarks/bench_node.py $N --seconds 20 --set max_objects=4 --out "$R/node20_mo4.json"
  step node20_mo1 90 "$PY" benchmarks/bench_node.py $N --seconds 20 --set max_objects=1 --out "$R/node20_mo1.json"
  step node30_mo1 100 "$PY" benchmarks/bench_node.py $N --seconds 30 --set max_objects=1 --out "$R/node30_mo1.json"
  step node20_mo2 90 "$PY" benchmarks/bench_node.py $N --seconds 20 --set max_objects=2 --out "$R/node20_mo2.json"
  ;;
node10)  # issue 6: depth/points and objects published from their own threads; defaults (max_objects 1)
  N="--device cuda --precision fp16 --weights random:vits16 --resolution 480x640"
  step node20 90 "$PY" benchmarks/bench_node.py $N --seconds 20 --out "$R/node20.json"
  step node30 100 "$PY" benchmarks/bench_node.py $N --seconds 30 --out "$R/node30.json"
  step node20_mo4 90 "$PY" benchmarks/bench_node.py $N --seconds 20 --set max_objects=4 --out "$R/node20_mo4.json"
  step profile 90 "$PY" benchmarks/profile_pipeline.py --device cuda --precision fp16 --frames 40 --out "$R/prof.json"
  ;;
node12)  # issue 6: matching in its own thread from the start (like TokenCut); node 20 s + 30 s, profile
  step tests 150 "$PY" -m pytest -q -p no:cacheprovider tests/test_heads_gpu.py tests/test_pipeline_core.py
  N="--device cuda --precision fp16 --weights random:vits16 --resolution 480x640"
  step node20 90 "$PY" benchmarks/bench_node.py $N --seconds 20 --out "$R/node20.json"
  step node30 100 "$PY" benchmarks/bench_node.py $N --seconds 30 --out "$R/node30.json"
  step profile 90 "$PY" benchmarks/profile_pipeline.py --device cuda --precision fp16 --frames 40 --out "$R/prof.json"
  ;;
node_spy)  # issue 6: the final node (shipped defaults) under py-spy: GIL holder per thread, and every thread
  "$PY" -m pip install -q --no-index --find-links .gpu/wheels py-spy >>"$LOG" 2>&1
  spy=$("$PY" -c 'import shutil,sys,os; print(shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable),"py-spy"))')
  N="--device cuda --precision fp16 --weights random:vits16 --resolution 480x640"
  step spy_gil 120 "$spy" record -r 500 -t -g -f raw --nonblocking -o "$R/spy_gil.txt" -- \
    "$PY" benchmarks/bench_node.py $N --seconds 20 --baseline-seconds 2 --out "$R/node_spy_gil.json"
  step spy_all 120 "$spy" record -r 500 -t -f raw --nonblocking -o "$R/spy_all.txt" -- \
    "$PY" benchmarks/bench_node.py $N --seconds 20 --baseline-seconds 2 --out "$R/node_spy_all.json"
  ;;
node11)  # issue 6: matching without intermediate host syncs (one copy back per call); the CUDA tests
  step tests 150 "$PY" -m pytest -q -p no:cacheprovider tests/test_heads_gpu.py tests/test_heads_correspondence.py
  N="--device cuda --precision fp16 --weights random:vits16 --resolution 480x640"
  step node20 90 "$PY" benchmarks/bench_node.py $N --seconds 20 --out "$R/node20.json"
  step node30 100 "$PY" benchmarks/bench_node.py $N --seconds 30 --out "$R/node30.json"
  step profile 90 "$PY" benchmarks/profile_pipeline.py --device cuda --precision fp16 --frames 40 --out "$R/prof.json"
  ;;
offline_tmpfs)  # issue 7: disk vs host limit for ViT-S/B - the same bench with the bags in memory (/dev/shm)
  free_gb=$(df -BG --output=avail /dev/shm | tail -1 | tr -dc 0-9)
  if [[ "${free_gb:-0}" -lt 24 ]]; then say "/dev/shm has ${free_gb} GB free (< 24): skipped"; else
    step sb_shm 300 "$PY" benchmarks/bench_offline.py --device cuda --precision fp16 --resolution 448x448 \
      --batch-size 32 --repeats 2 --rows tool,ceiling --weights random:vits16,random:vitb16 --frames 4096 \
      --workdir /dev/shm/bench_offline --out "$R/sb_shm.json"
    rm -rf /dev/shm/bench_offline
  fi
  ;;
*) say "unknown suite $SUITE"; exit 2 ;;
esac
tar -czf "$OUT/results_$SUITE.tgz" -C "$OUT" "$SUITE"
say "done"
