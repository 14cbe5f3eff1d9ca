#!/usr/bin/env bash
# The reference recipe against this project's recipe on the same backbone (issue 17, item 3): 5-fold
# configs/reference-recipe.yaml (the text alone, BCE, folds hard-voted at 0.5 by the reference's rule) fine-tuned
# from the backbone that bench/offline_recipe.sh SEED post-trained, with the offline recipe's optimiser settings
# (lr 3e-4, batch 32, <= 6 epochs, patience 2: lr 4e-5 / batch 128 is a base-size hub encoder's setting), dev as the
# file to predict. Printed beside the project's recipe of the same seed (outputs/offline-cpu-sSEED, its n-gram
# member and their stack), so both are read from one place. Nothing is chosen on dev; dev is only scored.
# Usage: bash bench/reference_vs_recipe.sh [SEED]   (needs bench/offline_recipe.sh SEED to have run first)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${NIKL_DATA:-../shared/data/nikluge-ea-2023}
[ -f "$DATA/train.jsonl" ] || { echo "skipped: NIKL data not found in $DATA (set NIKL_DATA)"; exit 0; }
SEED=${1:-42}
PT=outputs/post-train-offline-s$SEED REF=outputs/reference-offline-s$SEED
[ -d "$PT" ] || { echo "no backbone $PT: run bash bench/offline_recipe.sh $SEED first"; exit 2; }
start=$(date +%s)
python train.py configs/reference-recipe.yaml --model_name_or_path "$PT" --train_files "$DATA/train.jsonl" \
  --test_file "$DATA/dev.jsonl" --output_dir "$REF" --seed "$SEED" --overwrite true --disable_tqdm true \
  --learning_rate 3e-4 --per_device_train_batch_size 32 --num_train_epochs 6 --early_stopping_patience 2 \
  --use_cpu true --bf16 false --dataloader_num_workers 0 > "$REF.log" 2>&1
python - "$DATA/dev.jsonl" "$SEED" "$REF" $(( $(date +%s) - start )) <<'PY'
import json, os, sys
sys.path.insert(0, "bench")
from run_figures import dev_f1, run_figures
dev, seed, ref, seconds = sys.argv[1:]
result = {"seed": int(seed), "reference_seconds": int(seconds), "reference": run_figures(ref, dev)}
recipe = f"outputs/offline-cpu-s{seed}"
if os.path.isdir(recipe):
    result["recipe_neural"] = run_figures(recipe, dev)
    result["recipe_ngram"] = run_figures(f"outputs/offline-cpu-ngram-s{seed}", dev)
    result["recipe_stack_dev"] = dev_f1(dev, f"outputs/offline-cpu-stack-s{seed}/submission.jsonl")
print(json.dumps(result))
PY
