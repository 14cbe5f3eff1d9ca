#!/usr/bin/env bash
# Post-training's efficiency levers, each alone, at equal wall-clock time on this machine (issue 36, item 2).
# Every lever gets the same time budget (time_budget_minutes: the schedule follows the clock), the same text
# (train + dev + test, labels unused) and configs/post_train-offline.yaml plus its own overrides; then fold 0 is
# fine-tuned from it with configs/offline-cpu.yaml and scored on its validation split of train.jsonl
# (fold_0/metrics.json): the choice is made there, never on dev. The held-out MLM loss is measured at a 15%
# masking rate whatever the lever's, on the same unpacked rows, so the column compares.
# Usage: bash bench/mlm_levers.sh [MINUTES] [LEVER ...]   (default: every lever below; nothing else running)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${NIKL_DATA:-../shared/data/nikluge-ea-2023}
[ -f "$DATA/train.jsonl" ] || { echo "skipped: NIKL data not found in $DATA (set NIKL_DATA)"; exit 0; }
MINUTES=${1:-6}; shift || true
declare -A LEVERS=(
  [today]=""
  [dense_head]="--masked_positions_head false"
  [no_dropout]="--pretraining_dropout 0"
  [packed]="--pack_sequences true --per_device_train_batch_size 16"
  [mask40]="--mlm_probability 0.4"
  [one_cycle]="--warmup_steps 0.5"
  [no_dropout_mask40]="--pretraining_dropout 0 --mlm_probability 0.4"
)
ORDER=${*:-today no_dropout packed mask40 one_cycle dense_head}
for lever in $ORDER; do
  pt=outputs/levers/pt-$lever-${MINUTES}min ft=outputs/levers/ft-$lever-${MINUTES}min
  start=$(date +%s)
  # shellcheck disable=SC2086
  python post_train.py configs/post_train-offline.yaml --time_budget_minutes "$MINUTES" --output_dir "$pt" \
    --train_files "$DATA/train.jsonl" "$DATA/dev.jsonl" "$DATA/test.jsonl" --overwrite true ${LEVERS[$lever]} | tail -1
  middle=$(date +%s)
  if [ "${FINE_TUNE:-1}" = 1 ]; then
    python train.py configs/offline-cpu.yaml --model_name_or_path "$pt" --train_files "$DATA/train.jsonl" \
      --test_file "$DATA/test.jsonl" --output_dir "$ft" --fold 0 --overwrite true > /dev/null
  fi
  python - "$lever" "$pt" "$ft" $((middle - start)) $(( $(date +%s) - middle )) <<'PY'
import json, os, sys
lever, pt, ft, post_seconds, fine_seconds = sys.argv[1:]
summary = json.load(open(f"{pt}/post_train.json"))
budget = summary["time_budget"]
metrics = f"{ft}/fold_0/metrics.json"
fold = json.load(open(metrics)) if os.path.exists(metrics) else {}
print(json.dumps({
    "lever": lever, "post_train_seconds": int(post_seconds), "seconds_per_step": budget["seconds_per_step"],
    "steps": budget["carried_out"]["steps"], "epochs": budget["carried_out"]["epochs"],
    "schedule_progress": budget["carried_out"]["schedule_progress"], "train_rows": summary["train_rows"],
    "held_out_mlm_loss": [round(summary["eval_loss_before"], 3), round(summary["eval_loss_after"], 3)],
    "fine_tune_seconds": int(fine_seconds), "fold0_val_micro_f1": round(fold.get("micro_f1", float("nan")), 4),
    "fold0_val_macro_f1": round(fold.get("macro_f1", float("nan")), 4)}))
PY
done
