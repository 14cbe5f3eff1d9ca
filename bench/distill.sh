#!/usr/bin/env bash
# The distilled student against the fold ensemble it learned from (issue 17, item 2): F1 on dev and throughput.
# Teacher: a finished 5-fold run whose test_file is dev (bench/offline_recipe.sh writes outputs/offline-cpu-sSEED);
# the student (same backbone and fine-tuning config) learns the train rows' OOF probabilities mixed with gold and
# the ensemble's probabilities on the test file's text (not dev's: the student never sees dev text), holds out the
# teacher's fold 0 to choose its epoch, and predicts dev once. Throughput: dev predicted by the 5 fold checkpoints
# vs the student, models loaded beforehand, same batch size, one process.
# Usage: bash bench/distill.sh [TEACHER] [STUDENT_DIR]
#   MEASURE_ONLY=1 skips training and measures an existing student again (e.g. when the training shared the CPU
#   with another job: the throughput figures are only worth something on an otherwise idle machine).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${NIKL_DATA:-../shared/data/nikluge-ea-2023}
[ -f "$DATA/train.jsonl" ] || { echo "skipped: NIKL data not found in $DATA (set NIKL_DATA)"; exit 0; }
TEACHER=${1:-outputs/offline-cpu-s42}
STUDENT=${2:-outputs/distill-s42}
BACKBONE=$(python -c "import yaml,sys; print(yaml.safe_load(open(sys.argv[1]))['model_name_or_path'])" "$TEACHER/config.yaml")
start=$(date +%s)
[ "${MEASURE_ONLY:-0}" = 1 ] || python distill.py configs/offline-cpu.yaml --model_name_or_path "$BACKBONE" --teacher_run "$TEACHER" \
  --train_files "$DATA/train.jsonl" --test_file "$DATA/dev.jsonl" --unlabelled_files "$DATA/test.jsonl" \
  --output_dir "$STUDENT" --overwrite true --disable_tqdm true | tail -1
seconds=$(( $(date +%s) - start )); [ "${MEASURE_ONLY:-0}" = 1 ] && seconds=-1
python - "$TEACHER" "$STUDENT" "$DATA/dev.jsonl" "$seconds" <<'PY'
import json, sys, time
import numpy as np
sys.path.insert(0, "bench")
from run_figures import dev_f1
from nikl_emotion.backends.classifier import EmotionClassifier
from nikl_emotion.text.data import load_jsonl
from nikl_emotion.decisions.metrics import decide, score
teacher, student, dev, seconds = sys.argv[1:]
rows = load_jsonl(dev)
gold = np.asarray(rows["labels"])
def timed(folders):
    models = [EmotionClassifier.from_pretrained(f, device="cpu") for f in folders]
    encoded = models[0].encode(rows)  # same tokenizer and preprocessing in every fold and the student
    start = time.perf_counter()
    probs = [m.predict_encoded(encoded, batch_size=256) for m in models]
    return np.mean(probs, axis=0), time.perf_counter() - start
folds = [f"{teacher}/fold_{k}/best" for k in range(5)]
ensemble, ensemble_seconds = timed(folds)
single, student_seconds = timed([f"{student}/best"])
summary = json.load(open(f"{student}/distill.json"))
print(json.dumps({
    "distill_seconds": int(seconds) if int(seconds) >= 0 else "not timed (MEASURE_ONLY)",
    "student_validation": summary["validation_micro_f1"],
    "dev_micro_f1": {"ensemble_soft_0.5": round(score(gold, decide(ensemble, 0.5, True))["micro_f1"], 4),
                     "ensemble_submission": dev_f1(dev, f"{teacher}/submission.jsonl"),
                     "student_0.5": dev_f1(dev, f"{student}/submission.jsonl")},
    "dev_rows_per_second": {"ensemble_5_folds": round(len(rows) / ensemble_seconds, 1),
                            "student": round(len(rows) / student_seconds, 1)},
    "speedup": round(ensemble_seconds / student_seconds, 2)}))
PY
