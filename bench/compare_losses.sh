#!/usr/bin/env bash
# BCE vs Focal vs ASL on NIKL with the offline backbone: same seed, same fold (0 of 5), same 10 epochs
# (no early stopping; the best epoch on the fold's validation split is kept), scored on dev.
# Usage: bash bench/compare_losses.sh [extra train.py overrides]
set -euo pipefail
cd "$(dirname "$0")/.."
for loss in bce focal asl; do
  python bench/nikl_dev.py --fold 0 --output_dir "outputs/losses-$loss" \
    --loss "$loss" --num_train_epochs 10 --early_stopping_patience 0 "$@" | tail -1
done
