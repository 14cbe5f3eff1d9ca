#!/usr/bin/env bash
# classifier_head target_pool against cls on the offline recipe's neural member (issue 28): the same post-trained
# backbone (stage 1 of bench/offline_recipe.sh), the same folds, seed and settings (configs/offline-cpu.yaml), only
# the head differs. Selection is on train.jsonl's out-of-fold rows; dev is scored once per finished 5-fold variant.
#   bash bench/target_pool.sh fold0 [SEED]   fold 0 of each head: its validation split of train.jsonl (~8 min each)
#   bash bench/target_pool.sh all [SEED]     5 folds of each head, then each stacked with the ngram:tfidf member on
#                                            the same folds; OOF, nested OOF and dev per variant
# Reads ../shared/data/nikluge-ea-2023 or $NIKL_DATA; the post-trained backbone is reused when it exists.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${NIKL_DATA:-../shared/data/nikluge-ea-2023}
[ -f "$DATA/train.jsonl" ] || { echo "skipped: NIKL data not found in $DATA (set NIKL_DATA)"; exit 0; }
STAGE=${1:-fold0} SEED=${2:-42}
PT=outputs/post-train-offline-s$SEED
if [ ! -f "$PT/post_train.json" ]; then
  python post_train.py configs/post_train-offline.yaml --train_files "$DATA/train.jsonl" "$DATA/dev.jsonl" \
    "$DATA/test.jsonl" --output_dir "$PT" --seed "$SEED" | tail -1
fi
FOLD=() TEST="$DATA/test.jsonl"
[ "$STAGE" = fold0 ] && FOLD=(--fold 0)
[ "$STAGE" = all ] && TEST="$DATA/dev.jsonl"  # predicted by every fold, scored once at the end
for HEAD in cls target_pool; do
  OUT=outputs/pool-$HEAD-$STAGE-s$SEED
  start=$(date +%s)
  python train.py configs/offline-cpu.yaml --model_name_or_path "$PT" --train_files "$DATA/train.jsonl" \
    --test_file "$TEST" --output_dir "$OUT" --seed "$SEED" --classifier_head "$HEAD" "${FOLD[@]}" \
    --overwrite true --disable_tqdm true > "$OUT.log" 2>&1
  echo "$HEAD: $(( $(date +%s) - start )) s"
  python -c "import json,sys; m=json.load(open(sys.argv[1])); print({k: m.get(k) for k in ('micro_f1','macro_f1','epochs_run','best_checkpoint')})" "$OUT/fold_0/metrics.json"
done
[ "$STAGE" = all ] || exit 0
NGRAM=outputs/pool-ngram-s$SEED
[ -f "$NGRAM/summary.json" ] || python train.py configs/offline-cpu-ngram.yaml \
  --train_files "$DATA/train.jsonl" --test_file "$TEST" --output_dir "$NGRAM" --seed "$SEED" --overwrite true > "$NGRAM.log" 2>&1
for HEAD in cls target_pool; do
  OUT=outputs/pool-$HEAD-all-s$SEED
  rm -rf "$OUT-stack"
  python ensemble.py --runs "$OUT" "$NGRAM" --strategy stack --output_dir "$OUT-stack" > /dev/null
  python - "$DATA/dev.jsonl" "$OUT" "$OUT-stack" "$HEAD" <<'PY'
import json, sys
sys.path.insert(0, "bench")
from run_figures import dev_f1, run_figures
dev, run, stack, head = sys.argv[1:]
print(json.dumps({"head": head, "neural": run_figures(run, dev), "stack_dev": dev_f1(dev, stack + "/submission.jsonl"),
                  "stack": json.load(open(stack + "/stack.json")).get("oof_scores")}))
PY
done
