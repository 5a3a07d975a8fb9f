#!/usr/bin/env bash
# Rebuild the bundled demo model (onnx_models/demo-synthetic-birads4) with the project's own
# commands, from synthetic studies only. NOT FOR CLINICAL USE.
#
#   train/make_demo_model.sh                 # work files in /tmp/mammo-density-demo
#   WORK=/data/demo OUT=/tmp/entry train/make_demo_model.sh
#
# About 20-30 min on a 2-core VM (most of it training; the four views two at a time;
# 24 min on 2026-11-27 with the machine shared).
# Steps whose output already exists in WORK are skipped (delete WORK to start over).
set -euo pipefail

MD=${MD:-mammo-density}
WORK=${WORK:-/tmp/mammo-density-demo}
OUT=${OUT:-$(cd "$(dirname "$0")/.." && pwd)/onnx_models/demo-synthetic-birads4}
TRAIN_SEED=1
TEST_SEED=2
TRAIN_STUDIES=400
TEST_STUDIES=150

# 1. Data: training studies (seed 1) and a held-out test set made with another seed (2).
[ -f "$WORK/train/manifest.csv" ] || \
  $MD synth "$WORK/train" --studies $TRAIN_STUDIES --seed $TRAIN_SEED --size small --jobs 2 --no-progress
[ -f "$WORK/test/manifest.csv" ] || \
  $MD synth "$WORK/test" --studies $TEST_STUDIES --seed $TEST_SEED --size small --jobs 2 --no-progress

# 2. Train the four per-view networks (the method's ResNet, 41 conv layers, width 8,
#    128 px). 15% of the training women are held out for validation / model selection.
TRAIN_CMD=(train --manifest "$WORK/train/manifest.csv" --view all --task birads4
  --input-size 128 --width 8 --optimizer adamw --lr 0.001 --weight-decay 1e-4
  --batch-size 16 --epochs 30 --lr-patience 4 --val-fraction 0.15 --test-fraction 0
  --split-seed 1 --seed 1 --parallel 2 --threads 1 --no-progress
  --cache-dir "$WORK/cache" --out "$WORK/run")
[ "$(ls "$WORK"/run/*/summary.json 2>/dev/null | wc -l)" -eq 4 ] || $MD "${TRAIN_CMD[@]}"

# 3. Evaluate on the held-out set against its ground truth (true_density).
EVAL_CMD=(evaluate --manifest "$WORK/test/manifest.csv" --run "$WORK/run"
  --label-column true_density --cache-dir "$WORK/cache" --out "$WORK/eval")
$MD "${EVAL_CMD[@]}"

# 4. Export: ONNX per view, checker + ONNX Runtime parity, manifest with sha256s + metrics.
rm -rf "$OUT"
$MD export --run "$WORK/run" --out "$OUT" --name demo-synthetic-birads4 --version 0.2.0 \
  --not-for-clinical-use --metrics "$WORK/eval/metrics.json" \
  --training-data "synthetic images from mammo-density synth (seed $TRAIN_SEED, $TRAIN_STUDIES studies, small size, hologic profile), not for clinical use; metrics on a held-out synthetic set (seed $TEST_SEED, $TEST_STUDIES studies) against true_density" \
  --intended-use "demonstration and testing of the mammo-density pipeline on synthetic images; NOT FOR CLINICAL USE" \
  --command "mammo-density synth WORK/train --studies $TRAIN_STUDIES --seed $TRAIN_SEED --size small" \
  --command "mammo-density synth WORK/test --studies $TEST_STUDIES --seed $TEST_SEED --size small" \
  --command "mammo-density ${TRAIN_CMD[*]//$WORK/WORK}" \
  --command "mammo-density ${EVAL_CMD[*]//$WORK/WORK}" \
  --command "train/make_demo_model.sh"

# 5. The exported entry, through the worker's ModelSet, scores the held-out set the same.
$MD evaluate --manifest "$WORK/test/manifest.csv" --model-dir "$OUT" \
  --label-column true_density --cache-dir "$WORK/cache" --out "$WORK/eval-onnx"
du -sh "$OUT"
