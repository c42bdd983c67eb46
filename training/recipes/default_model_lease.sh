#!/usr/bin/env bash
# The default model as we actually trained it: teacher pretraining (Gram-anchored) -> ViT-S/16
# distillation -> linear depth head, all inside ONE 10-minute GPU lease (a machine given back after each
# call keeps nothing, and the teacher checkpoints are too large to carry between machines).
#
# Data: the procedural source + a pre-rendered synthetic pack (that GPU machine has no open3d) + the
# scikit-image photographs. Make the packs first, on any machine with the project installed:
#   dinov3-ros synth --out .gpu/pack     --format folder --frames 640 --frames-per-scene 4 --size 224x224 --seed 11 --jpeg-quality 90
#   dinov3-ros synth --out .gpu/pack_val --format folder --frames 64  --frames-per-scene 4 --size 224x224 --seed 50021 --jpeg-quality 90
# Then, on the GPU machine, from the repository root:
#   OUT=/path/to/results training/recipes/default_model_lease.sh
# Stage budgets (seconds) bound each stage; a stage cut by its budget still leaves its latest checkpoint,
# which the next stage uses (distill reads the newest pretraining checkpoint). With more time, use
# training/recipes/default_model.sh, which runs the same stages to their configured ends, resumably.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
PY="${PY:-python3}"
DEVICE="${DEVICE:-cuda}"
RUN="${RUN:-runs/default_model}"
OUT="${OUT:-$RUN/out}"
PACK="${PACK:-.gpu/pack}"
VAL_PACK="${VAL_PACK:-.gpu/pack_val}"
T_PRETRAIN="${T_PRETRAIN:-230}"
T_DISTILL="${T_DISTILL:-210}"
T_DEPTH="${T_DEPTH:-80}"
PRETRAIN_ITERS="${PRETRAIN_ITERS:-560}"
DISTILL_ITERS="${DISTILL_ITERS:-560}"
DEPTH_ITERS="${DEPTH_ITERS:-1200}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$RUN" "$OUT"
LOG="$OUT/lease.log"
say() { echo "[lease $(date -u +%H:%M:%S)] $*" | tee -a "$LOG"; }

PHOTOS="$("$PY" -c 'import os, skimage; print(os.path.join(os.path.dirname(skimage.__file__), "data"))')"
SOURCES="[{type: procedural, weight: 0.4, height: 256, width: 256, seed: 1}, {type: folder, root: '$PACK/rgb', weight: 0.4}, {type: folder, root: '$PHOTOS', weight: 0.2}]"
# Gram anchoring switches on at 70% of the run; the Gram teacher is refreshed once at 85%.
G0=$(( PRETRAIN_ITERS * 7 / 10 )); G1=$(( PRETRAIN_ITERS * 85 / 100 ))

say "pretrain: $PRETRAIN_ITERS it (Gram from $G0, refresh at $G1), budget ${T_PRETRAIN}s"
timeout "$T_PRETRAIN" "$PY" -m training.cli pretrain --config training/recipes/default_teacher.yaml \
  --output-dir "$RUN/pretrain" "data.sources=$SOURCES" "train.iterations=$PRETRAIN_ITERS" \
  "gram.loss_weight.start_iter=$G0" "dino.local_weight.start_iter=$G0" "gram.it_first_update=$G1" \
  "train.checkpoint_period=80" ${EXTRA_PRETRAIN:-} 2>&1 | tail -n 400 >> "$LOG"
say "pretrain exit ${PIPESTATUS[0]}"

say "distill: $DISTILL_ITERS it, budget ${T_DISTILL}s"
timeout "$T_DISTILL" "$PY" -m training.cli distill --config training/configs/distill_default_vits16.yaml \
  --device "$DEVICE" "output_dir=$RUN/distill" "teacher.checkpoint=$RUN/pretrain" "data.sources=$SOURCES" \
  "train.iterations=$DISTILL_ITERS" "train.checkpoint_period=80" ${EXTRA_DISTILL:-} 2>&1 | tail -n 400 >> "$LOG"
say "distill exit ${PIPESTATUS[0]}"

STUDENT="$RUN/distill/students/vits16"
say "depth: $DEPTH_ITERS it, budget ${T_DEPTH}s"
timeout "$T_DEPTH" "$PY" -m training.cli depth --config training/configs/depth_default_vits16.yaml --device "$DEVICE" \
  "output_dir=$RUN/depth" "backbone.weights=$STUDENT/backbone_ema.pth" "data.folder=$PACK" \
  "data.val_folder=$VAL_PACK" "train.iterations=$DEPTH_ITERS" "train.checkpoint_period=200" ${EXTRA_DEPTH:-} 2>&1 | tail -n 200 >> "$LOG"
say "depth exit ${PIPESTATUS[0]}"

# Results: the fp16 student (split into <16 MB parts for transport), the depth head, metrics, configs.
if [[ -f "$STUDENT/backbone_ema_fp16.pth" ]]; then
  split -b 15m -d "$STUDENT/backbone_ema_fp16.pth" "$OUT/student_fp16.pth.part"
  sha256sum "$STUDENT/backbone_ema_fp16.pth" | tee -a "$LOG"
fi
cp -f "$RUN/depth/depth_head.pt" "$OUT/" 2>/dev/null || say "no depth head"
tar -czf "$OUT/meta.tgz" -C "$RUN" --exclude='*.pt' --exclude='*.pth' --exclude='ckpt' --exclude='*.distcp' \
  pretrain distill depth 2>/dev/null || true
say "done: $(ls "$OUT" | tr '\n' ' ')"
