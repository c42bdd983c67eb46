#!/usr/bin/env bash
# The shipped default model, end to end and resumable:
#   teacher   ViT-S/16 from scratch: DINOv3 SSL + the simulator losses    (default_teacher.yaml)
#   student   the shipped ViT-S/16, distilled from the teacher           (default_student.yaml)
#   depth     linear depth head on the frozen student                    (default_depth.yaml)
#   objects   objects head (TokenCut's token projection) on the frozen student (default_objects.yaml)
#   export    fp16 student + depth and objects heads + provenance into OUT/model/
#   ablation  the teacher without the simulator losses (same data, SSL only; for the model card)
#   eval      dinov3-ros eval of student, teacher, ablation and the floors on held-out scenes
#
# Usage:  training/recipes/default_model.sh [OUT]            (OUT defaults to runs/default_model)
# Re-run after an interruption: finished stages are skipped, unfinished ones resume from their last
# checkpoint. Every stage's frames are ray-cast on the training GPU (training.sim), nothing is read
# from disk but the code.
#
# Environment:
#   STAGES="..."        subset/order of: teacher student depth export ablation eval
#                       (default: teacher student depth objects export)
#   TEACHER_ITERS / STUDENT_ITERS / DEPTH_ITERS / ABLATION_ITERS   iterations of each training stage
#                       (defaults: the configs'); schedules are fractions of the run, so these only scale
#   TEACHER_SECONDS / STUDENT_SECONDS / DEPTH_SECONDS / ABLATION_SECONDS   wall-time limit of one
#                       invocation of a stage (checkpoint and stop; re-run to continue)
#   EXTRA_TEACHER / EXTRA_STUDENT / EXTRA_DEPTH / EXTRA_OBJECTS   extra section.key=value overrides, one per line
#                       (so YAML values may contain spaces)
#   EVAL_FLAGS          extra dinov3-ros eval flags (e.g. "--size 640x480 --device cuda")
#   PY=python interpreter (default: python3)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
OUT="${1:-runs/default_model}"
PY="${PY:-python3}"
STAGES="${STAGES:-teacher student depth objects export}"
R=training/recipes
STUDENT="$OUT/student/students/vits16"
mkdir -p "$OUT"
LOG="$OUT/recipe.log"

say() { echo "[default_model $(date -u +%H:%M:%S)] $*" | tee -a "$LOG"; }
want() { [[ " $STAGES " == *" $1 "* ]]; }
opt() { [[ -n "${2:-}" ]] && echo "$1=$2" || true; }
lines() { [[ -n "${1:-}" ]] && printf '%s\n' "$1" | sed '/^[[:space:]]*$/d' || true; }  # one override per line

stage() {  # name done-marker iters seconds extra -- command... : run unless done, resumable
  local name=$1 done=$2 iters=${3:-} secs=${4:-} extra=${5:-}
  shift 6
  if [[ -f "$done" ]]; then say "$name: done, skipping"; return 0; fi
  say "$name: $*"
  local args=()
  mapfile -t args < <(opt train.iterations "$iters"; opt train.max_seconds "$secs"; lines "$extra")
  "$PY" -m training.cli "$@" "${args[@]}" 2>&1 | tee -a "$LOG"
  [[ -f "$done" ]] || { say "$name: not finished; re-run to continue"; exit 0; }
}

if want teacher; then
  stage teacher "$OUT/teacher/teacher_backbone.pth" "${TEACHER_ITERS:-}" "${TEACHER_SECONDS:-}" \
    "${EXTRA_TEACHER:-}" -- pretrain --config "$R/default_teacher.yaml" --output-dir "$OUT/teacher"
fi
if want student; then
  stage student "$STUDENT/export.json" "${STUDENT_ITERS:-}" "${STUDENT_SECONDS:-}" "${EXTRA_STUDENT:-}" -- \
    distill --config "$R/default_student.yaml" --output-dir "$OUT/student" "teacher.checkpoint=$OUT/teacher"
fi
if want depth; then
  stage depth "$OUT/depth/depth_head.pt" "${DEPTH_ITERS:-}" "${DEPTH_SECONDS:-}" "${EXTRA_DEPTH:-}" -- \
    depth --config "$R/default_depth.yaml" --output-dir "$OUT/depth" "backbone.weights=$STUDENT/backbone_ema.pth"
fi
if want objects; then
  stage objects "$OUT/objects/objects_head.npz" "" "" "${EXTRA_OBJECTS:-}" -- \
    objects --config "$R/default_objects.yaml" --output-dir "$OUT/objects" "backbone.weights=$STUDENT/backbone_ema.pth"
fi

if want export; then
  say "export: $OUT/model"
  "$PY" -m training.recipes.export_default --run "$OUT" --out "$OUT/model" 2>&1 | tee -a "$LOG"
fi

if want ablation; then
  stage ablation "$OUT/teacher_ssl_only/teacher_backbone.pth" "${ABLATION_ITERS:-}" "${ABLATION_SECONDS:-}" \
    "${EXTRA_TEACHER:-}" -- pretrain --config "$R/default_teacher_ssl_only.yaml" --output-dir "$OUT/teacher_ssl_only"
fi

if want eval; then
  models=(--weights "$STUDENT/backbone_ema.pth" --weights "$OUT/teacher/teacher_backbone.pth")
  [[ -f "$OUT/teacher_ssl_only/teacher_backbone.pth" ]] && models+=(--weights "$OUT/teacher_ssl_only/teacher_backbone.pth")
  models+=(--weights random:vits16 --weights random-ls1:vits16 --weights pixels --weights colorhist)
  # shellcheck disable=SC2086
  "$PY" -m dinov3_ros.cli eval "${models[@]}" --arch vits16 --out "$OUT/eval/probes" ${EVAL_FLAGS:-} 2>&1 | tee -a "$LOG"
  # shellcheck disable=SC2086
  "$PY" -m dinov3_ros.cli eval --weights "$STUDENT/backbone_ema.pth" --arch vits16 --tasks depth \
    --depth-head "$OUT/depth/depth_head.pt" --out "$OUT/eval/head" ${EVAL_FLAGS:-} 2>&1 | tee -a "$LOG"
  # shellcheck disable=SC2086
  "$PY" -m dinov3_ros.cli eval --weights "$STUDENT/backbone_ema.pth" --arch vits16 --tasks tokencut \
    --objects-head "$OUT/objects/objects_head.npz" --out "$OUT/eval/objects" ${EVAL_FLAGS:-} 2>&1 | tee -a "$LOG"
fi
say "stages done: $STAGES"
