#!/usr/bin/env bash
# MLM vs RTD post-training of the offline backbone at equal wall-clock time on this machine (issue 16, item 2).
# Each objective gets the same time budget (time_budget_minutes, measured on this machine), the same data
# (text of train + dev + test, labels unused) and config (configs/post_train-offline.yaml); then fold 0 is
# fine-tuned from each with configs/offline-cpu.yaml and scored on its validation split of train.jsonl
# (fold_0/metrics.json): the choice is made there, never on dev.
# Usage: bash bench/pretrain_objectives.sh [MINUTES] [extra post_train.py/train.py overrides, e.g. --offline_pretokenizer kiwi]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${NIKL_DATA:-../shared/data/nikluge-ea-2023}
[ -f "$DATA/train.jsonl" ] || { echo "skipped: NIKL data not found in $DATA (set NIKL_DATA)"; exit 0; }
MINUTES=${1:-12}; shift || true
TAG=${TAG:-}
for objective in ${OBJECTIVES:-mlm rtd}; do
  pt=outputs/pt-$objective$TAG-${MINUTES}min ft=outputs/ft-$objective$TAG-${MINUTES}min
  start=$(date +%s)
  python post_train.py configs/post_train-offline.yaml --objective "$objective" --time_budget_minutes "$MINUTES" \
    --train_files "$DATA/train.jsonl" "$DATA/dev.jsonl" "$DATA/test.jsonl" --output_dir "$pt" --overwrite true "$@" | tail -1
  middle=$(date +%s)
  python train.py configs/offline-cpu.yaml --model_name_or_path "$pt" --train_files "$DATA/train.jsonl" \
    --test_file "$DATA/test.jsonl" --output_dir "$ft" --fold 0 --overwrite true "$@" > /dev/null
  python - "$objective" "$pt" "$ft" $((middle - start)) $(( $(date +%s) - middle )) <<'PY'
import json, sys
objective, pt, ft, post_seconds, fine_seconds = sys.argv[1:]
summary = json.load(open(f"{pt}/post_train.json"))
fold = json.load(open(f"{ft}/fold_0/metrics.json"))
print(json.dumps({"objective": objective, "post_train_seconds": int(post_seconds), "steps": summary["steps"],
                  "epochs": summary.get("time_budget", {}).get("epochs"), "fine_tune_seconds": int(fine_seconds),
                  "fold0_val_micro_f1": round(fold["micro_f1"], 4), "fold0_val_macro_f1": round(fold["macro_f1"], 4)}))
PY
done
