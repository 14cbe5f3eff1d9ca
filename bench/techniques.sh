#!/usr/bin/env bash
# Each fine-tuning technique's own effect (issue 17): fold 0 of configs/offline-cpu.yaml fine-tuned from one
# post-trained offline backbone, one technique on at a time (or the reference recipe's settings), scored on fold 0's
# validation split of train.jsonl (fold_0/metrics.json). The choice is made there: dev is never read.
# Usage: bash bench/techniques.sh BACKBONE [VARIANT ...]
#   BACKBONE  a post-trained folder, e.g. outputs/post-train-offline-s42 (bench/offline_recipe.sh writes it)
#   VARIANT   names below (default: every single technique but pseudo); pseudo needs TEACHER=OUT, a finished
#             5-fold run of the same backbone, seed and training file with a test_file (e.g. outputs/offline-cpu-s42)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${NIKL_DATA:-../shared/data/nikluge-ea-2023}
[ -f "$DATA/train.jsonl" ] || { echo "skipped: NIKL data not found in $DATA (set NIKL_DATA)"; exit 0; }
BACKBONE=${1:?usage: bash bench/techniques.sh BACKBONE [VARIANT ...]}; shift
declare -A VARIANTS=(
  [baseline]=""
  [reference]="--input_format text --decision fixed --vote_rule reference"
  [text_input]="--input_format text"
  [llrd0.8]="--layerwise_lr_decay 0.8"
  [ema0.999]="--ema_decay 0.999"
  [swa2]="--swa_epochs 2"
  [rdrop1]="--rdrop_alpha 1.0"
  [msd5]="--multi_sample_dropout 5"
  [fgm1]="--adversarial fgm --adversarial_epsilon 1.0"
  [awp0.005]="--adversarial awp --adversarial_epsilon 0.005"
  [pseudo0.9]="--pseudo_label_run ${TEACHER:-} --pseudo_label_threshold 0.9"
  [msd5+fgm1]="--multi_sample_dropout 5 --adversarial fgm --adversarial_epsilon 1.0"
)
ORDER=(baseline reference text_input llrd0.8 ema0.999 swa2 rdrop1 msd5 fgm1 awp0.005)
[ $# -gt 0 ] && ORDER=("$@")
for name in "${ORDER[@]}"; do
  [ -n "${VARIANTS[$name]+set}" ] || { echo "unknown variant $name (one of ${!VARIANTS[*]})"; exit 2; }
  out=outputs/tech-$name
  start=$(date +%s)
  # shellcheck disable=SC2086
  python train.py configs/offline-cpu.yaml --model_name_or_path "$BACKBONE" --train_files "$DATA/train.jsonl" \
    --test_file "$DATA/test.jsonl" --output_dir "$out" --fold 0 --overwrite true --disable_tqdm true \
    ${VARIANTS[$name]} > "$out.log" 2>&1 || { echo "{\"variant\": \"$name\", \"failed\": \"see $out.log\"}"; continue; }
  python - "$name" "$out" $(( $(date +%s) - start )) <<'PY'
import json, sys
name, out, seconds = sys.argv[1:]
fold = json.load(open(f"{out}/fold_0/metrics.json"))
print(json.dumps({"variant": name, "fold0_val_micro_f1": round(fold["micro_f1"], 4),
                  "fold0_val_macro_f1": round(fold["macro_f1"], 4), "epochs_run": fold["epochs_run"],
                  "pseudo_label_rows": fold.get("pseudo_label_rows", 0), "seconds": int(seconds)}))
PY
done
