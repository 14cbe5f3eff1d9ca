#!/usr/bin/env bash
# The offline CPU recipe on NIKL, timed, scored on dev (the figures in BENCHMARKS.md):
#   stage 1: MLM post-training of the offline backbone on the text of train + dev + test (labels unused; the
#            dev text stands in for the test text a submission run would learn from);
#   stage 2: 5-fold fine-tuning (configs/offline-cpu.yaml) with dev as the file to predict, hard vote, score;
#   then fold 0 alone, and fold 0 fine-tuned from a random init with the same config (without post-training).
# Usage: bash bench/offline_recipe.sh   (reads ../shared/data/nikluge-ea-2023 or $NIKL_DATA)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${NIKL_DATA:-../shared/data/nikluge-ea-2023}
[ -f "$DATA/train.jsonl" ] || { echo "skipped: NIKL data not found in $DATA (set NIKL_DATA)"; exit 0; }
start=$(date +%s)
python post_train.py configs/post_train-offline.yaml --train_files "$DATA/train.jsonl" "$DATA/dev.jsonl" "$DATA/test.jsonl" | tail -1
echo "{\"stage\": 1, \"seconds\": $(( $(date +%s) - start ))}"
python bench/nikl_dev.py --config configs/offline-cpu.yaml --output_dir outputs/offline-cpu | tail -1
python bench/nikl_dev.py --config configs/offline-cpu.yaml --output_dir outputs/offline-cpu --fold 0 | tail -1
python bench/nikl_dev.py --config configs/offline-cpu.yaml --output_dir outputs/offline-cpu-scratch --fold 0 \
  --model_name_or_path offline:electra-mini --offline_vocab_size 16000 | tail -1
