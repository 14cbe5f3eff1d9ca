#!/usr/bin/env bash
# Does time_budget_minutes hold with gradient accumulation? (issue 26, item 11). Post-trains the offline recipe's
# backbone on NIKL train text under the same budget twice, with the same effective batch of 64 rows: 64 x 1
# micro-batch, and 16 x 4 micro-batches (gradient_accumulation_steps 4). Prints, for each, the seconds per optimizer
# step the calibration measured, the steps it planned, the seconds it planned and the seconds the run took (from
# post_train.json: loading and tokenizer training included, as the budget counts them). Run on an idle machine.
# Usage: bash bench/time_budget_accumulation.sh [MINUTES]   (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${NIKL_DATA:-../shared/data/nikluge-ea-2023}
[ -f "$DATA/train.jsonl" ] || { echo "skipped: NIKL data not found in $DATA (set NIKL_DATA)"; exit 0; }
MINUTES=${1:-3}
for setting in "64 1" "16 4"; do
  set -- $setting
  out=outputs/budget-b$1-ga$2
  python post_train.py configs/post_train-offline.yaml --train_files "$DATA/train.jsonl" --output_dir "$out" \
    --overwrite true --time_budget_minutes "$MINUTES" --per_device_train_batch_size "$1" \
    --gradient_accumulation_steps "$2" > /dev/null 2>&1
  python - "$out" "$1" "$2" <<'PY'
import json, sys
out, batch, accumulation = sys.argv[1:]
summary = json.load(open(f"{out}/post_train.json"))
plan = summary["time_budget"]
print(json.dumps({"per_device_train_batch_size": int(batch), "gradient_accumulation_steps": int(accumulation),
                  "budget_seconds": plan["time_budget_minutes"] * 60, "seconds_per_step": plan["seconds_per_step"],
                  "planned_steps": plan["max_steps"], "steps": summary["steps"], "planned_seconds":
                  round(plan["spent_before_training_seconds"] + plan["planned_seconds"], 1),
                  "spent_seconds": summary["seconds"]}))
PY
done
