#!/usr/bin/env bash
# The offline recipe with extra fine-tuning keys (issue 17: a technique that helped on fold 0 checked over 5 folds):
# stages 2-4 of bench/offline_recipe.sh SEED again — 5-fold fine-tuning of the same post-trained backbone with KEYS
# added, dev as the file to predict, then the stack with the same seed's n-gram member — printed beside the recipe's
# own figures for that seed. OOF (and the stack's nested OOF) is where the choice is made; dev is only scored.
# Usage: bash bench/recipe_with.sh SEED TAG KEY VALUE [KEY VALUE ...]
#   e.g. bash bench/recipe_with.sh 42 msd5 --multi_sample_dropout 5   (needs bench/offline_recipe.sh 42 first)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${NIKL_DATA:-../shared/data/nikluge-ea-2023}
[ -f "$DATA/train.jsonl" ] || { echo "skipped: NIKL data not found in $DATA (set NIKL_DATA)"; exit 0; }
SEED=${1:?usage: bash bench/recipe_with.sh SEED TAG KEY VALUE ...}; TAG=${2:?TAG}; shift 2
PT=outputs/post-train-offline-s$SEED BASE=outputs/offline-cpu-s$SEED NGRAM=outputs/offline-cpu-ngram-s$SEED
RUN=outputs/offline-cpu-$TAG-s$SEED STACK=outputs/offline-cpu-$TAG-stack-s$SEED.jsonl
for need in "$PT" "$BASE" "$NGRAM"; do
  [ -d "$need" ] || { echo "missing $need: run bash bench/offline_recipe.sh $SEED first"; exit 2; }
done
start=$(date +%s)
python train.py configs/offline-cpu.yaml --model_name_or_path "$PT" --train_files "$DATA/train.jsonl" \
  --test_file "$DATA/dev.jsonl" --output_dir "$RUN" --seed "$SEED" --overwrite true --disable_tqdm true "$@" \
  > "$RUN.log" 2>&1
t1=$(date +%s)
python ensemble.py --runs "$RUN" "$NGRAM" --strategy stack --output "$STACK" > "$RUN-stack.log" 2>&1
python - "$DATA/dev.jsonl" "$SEED" "$TAG" "$RUN" "$BASE" "$NGRAM" "$STACK" $((t1 - start)) <<'PY'
import json, sys
sys.path.insert(0, "bench")
from run_figures import dev_f1, run_figures
dev, seed, tag, run, base, ngram, stack, seconds = sys.argv[1:]
print(json.dumps({"seed": int(seed), "variant": tag, "fine_tune_seconds": int(seconds),
                  "variant_neural": run_figures(run, dev), "recipe_neural": run_figures(base, dev),
                  "variant_stack_dev": dev_f1(dev, stack), "recipe_stack_dev": dev_f1(dev, f"outputs/offline-cpu-stack-s{seed}/submission.jsonl")}))
PY
grep -a "^decision" "$RUN-stack.log" | sed "s/^/stack of $TAG + n-gram: /"
