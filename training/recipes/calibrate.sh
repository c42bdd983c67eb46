#!/usr/bin/env bash
# Size the default-model recipe for this GPU: every stage of default_model.sh for a few iterations on
# small frame pools, then a table of frames/s rendered, iterations/s, peak memory and the iterations that
# fit a time budget per stage (CAL_BUDGET seconds, default 480).
#
# Usage:  training/recipes/calibrate.sh [OUT]        (OUT defaults to runs/calibrate; it is recreated)
#         then e.g.  TEACHER_ITERS=... STUDENT_ITERS=... training/recipes/default_model.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
OUT="${1:-runs/calibrate}"
PY="${PY:-python3}"
N="${CAL_ITERS:-30}"
rm -rf "$OUT"
export PY
POOL=$'sim.pool.scenes=1024\nsim.pool.initial_scenes=1024'
STAGES="teacher student depth" TEACHER_ITERS="$N" STUDENT_ITERS="$N" DEPTH_ITERS="$((2 * N))" \
  EXTRA_TEACHER="$POOL"$'\n'"train.checkpoint_period=$N" EXTRA_STUDENT="$POOL" \
  EXTRA_DEPTH="data.pool={scenes: 64, backend: ${CAL_BACKEND:-torch}, render_batch: 64, workers: 8}" \
  bash training/recipes/default_model.sh "$OUT"
"$PY" -m training.recipes.calibrate_report "$OUT" --budget "${CAL_BUDGET:-480}"
