#!/usr/bin/env bash
# The embedded default model (issue 11), end to end and resumable:
#   1. pretrain  a teacher with the Gram-anchored DINOv3 recipe on procedural + synthetic images + the
#                scikit-image photographs            (dinov3-train pretrain, config of the issue-8 owner)
#   2. distill   it into a ViT-S/16 student          (dinov3-train distill, distill_default_vits16.yaml)
#   3. depth     a linear depth head on the frozen student, synthetic depth (depth_default_vits16.yaml)
#   4. eval      dinov3-ros eval: student vs a random-initialised ViT-S/16 on held-out synthetic scenes
#   5. export    fp16 student + depth head + provenance into OUT/model/
#
# Usage:  training/recipes/default_model.sh [OUT]          (OUT defaults to runs/default_model)
# Re-run the same command after any interruption: finished stages are skipped (their outputs exist),
# unfinished ones resume from their last checkpoint.
#
# Environment:
#   MAX_STEPS=N      run at most N more iterations of the current training stage, then stop (a chunk
#                    for short GPU leases); re-run to continue. 0 (default) = run to the end.
#   STAGES="..."     subset/order of: pretrain distill depth eval export (default: all).
#   PRETRAIN_CONFIG  pretraining YAML (default training/recipes/default_teacher.yaml).
#   DISTILL_CONFIG / DEPTH_CONFIG   override the stage configs.
#   SYNTH_PACK / SYNTH_VAL_PACK  pre-rendered synthetic folders instead of rendering (no open3d needed).
#   DEVICE=cuda|cpu  (default: cuda when available).   PY=python interpreter (default: python3).
#   EXTRA_PRETRAIN / EXTRA_DISTILL / EXTRA_DEPTH   extra section.key=value overrides per stage;
#   EXTRA_EVAL       extra dinov3-ros eval flags (e.g. "--train-scenes 4 --test-scenes 2").
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
OUT="${1:-runs/default_model}"
PY="${PY:-python3}"
MAX_STEPS="${MAX_STEPS:-0}"
STAGES="${STAGES:-pretrain distill depth eval export}"
PRETRAIN_CONFIG="${PRETRAIN_CONFIG:-training/recipes/default_teacher.yaml}"
DISTILL_CONFIG="${DISTILL_CONFIG:-training/configs/distill_default_vits16.yaml}"
DEPTH_CONFIG="${DEPTH_CONFIG:-training/configs/depth_default_vits16.yaml}"
DEVICE="${DEVICE:-$("$PY" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')}"
STUDENT="$OUT/distill/students/vits16"
mkdir -p "$OUT"
LOG="$OUT/recipe.log"

say() { echo "[default_model $(date -u +%H:%M:%S)] $*" | tee -a "$LOG"; }
want() { [[ " $STAGES " == *" $1 "* ]]; }
unfinished() { say "$1 not finished yet (chunk of MAX_STEPS=$MAX_STEPS done); re-run this command to continue"; exit 0; }

# The scikit-image sample photographs (the only real photos an install ships) as a folder source.
# SYNTH_PACK=DIR (and SYNTH_VAL_PACK=DIR): pre-rendered `dinov3-ros synth --format folder` packs replace
# on-the-fly rendering, for machines without open3d (the pack's rgb/ feeds pretrain/distill, its depth the head).
if [[ -n "${SYNTH_PACK:-}" ]]; then
  SYNTH="{type: folder, root: '$SYNTH_PACK/rgb', weight: 0.4}"
  EXTRA_DEPTH="data.folder=$SYNTH_PACK data.val_folder=${SYNTH_VAL_PACK:-$SYNTH_PACK} ${EXTRA_DEPTH:-}"
else
  SYNTH="{type: synthetic, weight: 0.4, height: 256, width: 256, seed: 1}"
fi
SOURCES="{type: procedural, weight: 0.4, height: 256, width: 256, seed: 1}, $SYNTH"
if SKIMAGE_DATA="$("$PY" -c 'import os, skimage; print(os.path.join(os.path.dirname(skimage.__file__), "data"))' 2>/dev/null)" \
    && [[ -d "$SKIMAGE_DATA" ]]; then
  SOURCES="$SOURCES, {type: folder, root: '$SKIMAGE_DATA', weight: 0.2}"
else
  say "scikit-image sample photographs not found: training on procedural + synthetic images only"
fi
SOURCES="[$SOURCES]"

# ------------------------------------------------------------------------------------ 1 pretrain
if want pretrain; then
  if [[ -f "$OUT/pretrain/teacher_backbone.pth" ]]; then
    say "pretrain: done ($OUT/pretrain/teacher_backbone.pth), skipping"
  else
    [[ -f "$PRETRAIN_CONFIG" ]] || { say "pretrain config $PRETRAIN_CONFIG not found (set PRETRAIN_CONFIG)"; exit 2; }
    extra=()
    if [[ "$MAX_STEPS" != 0 ]]; then
      last=$(ls "$OUT/pretrain/ckpt" 2>/dev/null | grep -E '^[0-9]{8}$' | sort | tail -1 || true)
      extra+=("train.stop_at_iteration=$(( 10#${last:-0} + MAX_STEPS ))")
    fi
    say "pretrain: $PRETRAIN_CONFIG -> $OUT/pretrain ${extra[*]:-}"
    # shellcheck disable=SC2086
    "$PY" -m training.cli pretrain --config "$PRETRAIN_CONFIG" --output-dir "$OUT/pretrain" \
      "data.sources=$SOURCES" "${extra[@]}" ${EXTRA_PRETRAIN:-} 2>&1 | tee -a "$LOG"
    [[ -f "$OUT/pretrain/teacher_backbone.pth" ]] || unfinished pretrain
  fi
fi

# ------------------------------------------------------------------------------------ 2 distill
if want distill; then
  if [[ -f "$STUDENT/export.json" ]]; then
    say "distill: done ($STUDENT), skipping"
  else
    chunk=(); [[ "$MAX_STEPS" != 0 ]] && chunk=(--max-steps "$MAX_STEPS")
    say "distill: $DISTILL_CONFIG -> $OUT/distill"
    # shellcheck disable=SC2086
    "$PY" -m training.cli distill --config "$DISTILL_CONFIG" --device "$DEVICE" "${chunk[@]}" \
      "output_dir=$OUT/distill" "teacher.checkpoint=$OUT/pretrain" "data.sources=$SOURCES" \
      ${EXTRA_DISTILL:-} 2>&1 | tee -a "$LOG"
    [[ -f "$STUDENT/export.json" ]] || unfinished distill
  fi
fi

# ------------------------------------------------------------------------------------ 3 depth head
if want depth; then
  if [[ -f "$OUT/depth/depth_head.pt" ]]; then
    say "depth: done ($OUT/depth/depth_head.pt), skipping"
  else
    chunk=(); [[ "$MAX_STEPS" != 0 ]] && chunk=(--max-steps "$MAX_STEPS")
    say "depth: $DEPTH_CONFIG -> $OUT/depth"
    # shellcheck disable=SC2086
    "$PY" -m training.cli depth --config "$DEPTH_CONFIG" --device "$DEVICE" "${chunk[@]}" \
      "output_dir=$OUT/depth" "backbone.weights=$STUDENT/backbone_ema.pth" ${EXTRA_DEPTH:-} 2>&1 | tee -a "$LOG"
    [[ -f "$OUT/depth/depth_head.pt" ]] || unfinished depth
  fi
fi

# ------------------------------------------------------------------------------------ 4 eval
if want eval; then
  if ! "$PY" -c 'import dinov3_ros.eval.cli' 2>/dev/null; then
    say "eval: dinov3_ros.eval.cli not importable, skipping"
  elif [[ -f "$OUT/eval/probe/eval.json" && -f "$OUT/eval/head/eval.json" ]]; then
    say "eval: done ($OUT/eval), skipping"
  else
    # shellcheck disable=SC2086
    say "eval: student vs random ViT-S/16 (ridge probes), then the student with its trained depth head"
    "$PY" -m dinov3_ros.cli eval --weights "$STUDENT/backbone_ema.pth" --weights random:vits16 --arch vits16 \
      --data synthetic --device "$DEVICE" --out "$OUT/eval/probe" ${EXTRA_EVAL:-} 2>&1 | tee -a "$LOG"
    "$PY" -m dinov3_ros.cli eval --weights "$STUDENT/backbone_ema.pth" --arch vits16 --tasks depth \
      --depth-head "$OUT/depth/depth_head.pt" --data synthetic --device "$DEVICE" --out "$OUT/eval/head" \
      ${EXTRA_EVAL:-} 2>&1 | tee -a "$LOG"
  fi
fi

# ------------------------------------------------------------------------------------ 5 export
if want export; then
  MODEL="$OUT/model"
  mkdir -p "$MODEL"
  cp -f "$STUDENT/backbone_ema_fp16.pth" "$MODEL/.vits16_default_fp16.pth.tmp"
  mv -f "$MODEL/.vits16_default_fp16.pth.tmp" "$MODEL/vits16_default_fp16.pth"
  cp -f "$OUT/depth/depth_head.pt" "$MODEL/.depth_head.pt.tmp" && mv -f "$MODEL/.depth_head.pt.tmp" "$MODEL/depth_head.pt"
  OUT="$OUT" MODEL="$MODEL" "$PY" - <<'PYEOF' 2>&1 | tee -a "$LOG"
import hashlib, json, os, pathlib
import yaml
from dinov3_ros.models.loading import load_backbone
from dinov3_ros.heads.depth import load_head

out, model = pathlib.Path(os.environ["OUT"]), pathlib.Path(os.environ["MODEL"])
dmeta = json.loads((out / "distill/students/vits16/export.json").read_text())
bb = load_backbone(model / "vits16_default_fp16.pth", dmeta["arch"], **dmeta["overrides"])  # loads as shipped
head, meta = load_head(model / "depth_head.pt", expect_embed_dim=bb.embed_dim)
def sha(p): return hashlib.sha256(p.read_bytes()).hexdigest()
def rd(p):
    p = out / p
    return json.loads(p.read_text()) if p.suffix == ".json" and p.is_file() else (yaml.safe_load(p.read_text()) if p.is_file() else None)
info = {
    "arch": dmeta["arch"],
    "files": {f.name: {"bytes": f.stat().st_size, "sha256": sha(f)} for f in sorted(model.glob("*.p*"))},
    "distill": rd("distill/students/vits16/export.json"),
    "depth_metrics_held_out": (rd("depth/metrics.json") or {}).get("held_out"),
    "configs": {k: rd(f"{k}/config.yaml") for k in ("pretrain", "distill", "depth")},
    "eval": {k: rd(f"eval/{k}/eval.json") for k in ("probe", "head")},
}
tmp = model / ".model.json.tmp"
tmp.write_text(json.dumps(info, indent=1, default=str))
os.replace(tmp, model / "model.json")
total = sum(v["bytes"] for v in info["files"].values())
print(f"export: {model} ({total / 1e6:.1f} MB): {', '.join(info['files'])}")
PYEOF
  say "export: done -> $MODEL"
fi
say "all requested stages done: $STAGES"
