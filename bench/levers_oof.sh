#!/usr/bin/env bash
# Issue 36, item 4: the levers that did not lose on fold 0 (bench/mlm_levers.sh), compared on 5-fold OOF of
# train.jsonl before any is adopted. Each lever's post-trained backbone (outputs/levers/pt-LEVER-MINUTESmin, made
# by bench/mlm_levers.sh) is fine-tuned on the folds its run folder lacks (fold 0 is already there), then the
# run's OOF figures are printed: micro-F1 at 0.5, the rule chosen and its nested OOF, each fold. Dev is not read.
# Fine-tuning runs a fixed recipe (epochs, early stopping), so its scores do not depend on speed: the levers run
# side by side, one process each with one thread (two torch processes with two threads each on 2 cores would
# stall on thread barriers). The post-training budgets were spent alone, by bench/mlm_levers.sh.
# Usage: bash bench/levers_oof.sh [MINUTES] LEVER ...
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${NIKL_DATA:-../shared/data/nikluge-ea-2023}
[ -f "$DATA/train.jsonl" ] || { echo "skipped: NIKL data not found in $DATA (set NIKL_DATA)"; exit 0; }
MINUTES=${1:-6}; shift || true
complete_folds() {
  local pt=outputs/levers/pt-$1-${MINUTES}min ft=outputs/levers/ft-$1-${MINUTES}min
  [ -d "$pt" ] || { echo "$pt: not found (run bench/mlm_levers.sh $MINUTES $1 first)"; return 1; }
  for fold in 0 1 2 3 4; do
    [ -f "$ft/fold_$fold/done.json" ] && continue
    OMP_NUM_THREADS=1 python train.py configs/offline-cpu.yaml --model_name_or_path "$pt" \
      --train_files "$DATA/train.jsonl" --test_file "$DATA/test.jsonl" --output_dir "$ft" --fold "$fold" > /dev/null
  done
}
for lever in "$@"; do complete_folds "$lever" & done
wait
for lever in "$@"; do
  python - "$lever" "outputs/levers/ft-$lever-${MINUTES}min" <<'PY'
import json, sys
lever, run = sys.argv[1:]
summary = json.load(open(f"{run}/summary.json"))
decision = summary["decision"]
nested = {c["name"]: c["micro_f1"] for c in decision.get("candidates", [])}.get(decision["chosen"])
print(json.dumps({"lever": lever, "oof_at_0.5": round(summary["oof"]["micro_f1"], 4),
                  "oof_macro_at_0.5": round(summary["oof"]["macro_f1"], 4), "rule": decision["chosen"],
                  "nested_oof": None if nested is None else round(nested, 4), "oof_exposure": summary.get("oof_exposure"),
                  "folds": [round(f["micro_f1"], 4) for f in summary["folds"]]}))
PY
done
