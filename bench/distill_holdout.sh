#!/usr/bin/env bash
# The distilled student with an honest epoch choice (issue 17): dev is split in two halves by a seeded shuffle;
# the student (as in bench/distill.sh) chooses its epoch on the first half (--validation_file: rows the teacher never
# trained on, so every training row trains it), and every model is scored once on the second half: this student,
# the student of bench/distill.sh (epoch chosen on the teacher's fold 0, optimistic there), and the teacher's fold
# ensemble (its submission and its soft vote at 0.5). The halves go to outputs/ (NIKL rows are never committed).
# Usage: bash bench/distill_holdout.sh [TEACHER] [STUDENT_DIR] [FOLD0_STUDENT]   (defaults: the seed-42 runs)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${NIKL_DATA:-../shared/data/nikluge-ea-2023}
[ -f "$DATA/train.jsonl" ] || { echo "skipped: NIKL data not found in $DATA (set NIKL_DATA)"; exit 0; }
TEACHER=${1:-outputs/offline-cpu-s42}
STUDENT=${2:-outputs/distill-holdout-s42}
FOLD0_STUDENT=${3:-outputs/distill-s42}
SPLIT=outputs/dev-halves
mkdir -p "$SPLIT"
python - "$DATA/dev.jsonl" "$SPLIT" <<'PY'
import sys
import numpy as np
dev, split = sys.argv[1:]
lines = [line for line in open(dev, encoding="utf-8") if line.strip()]
order = np.random.default_rng(0).permutation(len(lines))
half = len(lines) // 2
for name, part in (("select", order[:half]), ("report", order[half:])):
    with open(f"{split}/dev_{name}.jsonl", "w", encoding="utf-8") as handle:
        handle.writelines(lines[i] for i in sorted(part))
PY
BACKBONE=$(python -c "import yaml,sys; print(yaml.safe_load(open(sys.argv[1]))['model_name_or_path'])" "$TEACHER/config.yaml")
start=$(date +%s)
python distill.py configs/offline-cpu.yaml --model_name_or_path "$BACKBONE" --teacher_run "$TEACHER" \
  --train_files "$DATA/train.jsonl" --validation_file "$SPLIT/dev_select.jsonl" --test_file "$SPLIT/dev_report.jsonl" \
  --unlabelled_files "$DATA/test.jsonl" --output_dir "$STUDENT" --overwrite true --disable_tqdm true | tail -2
seconds=$(( $(date +%s) - start ))
python - "$TEACHER" "$STUDENT" "$FOLD0_STUDENT" "$DATA/dev.jsonl" "$SPLIT" "$seconds" <<'PY'
import json, sys
import numpy as np
sys.path.insert(0, "bench")
from run_figures import dev_f1
from nikl_emotion.text.data import load_jsonl
from nikl_emotion.training.distillation import ensemble_probabilities
from nikl_emotion.decisions.metrics import decide, score
teacher, student, fold0_student, dev, split, seconds = sys.argv[1:]
report = f"{split}/dev_report.jsonl"
rows = load_jsonl(report)
ids = list(rows["id"])
report_ids = set(ids)
def on_report(submission):
    """The submission's rows of the report half, scored by score.py."""
    kept = f"{split}/{submission.replace('/', '_')}"
    with open(submission, encoding="utf-8") as source, open(kept, "w", encoding="utf-8") as target:
        target.writelines(line for line in source if json.loads(line)["id"] in report_ids)
    return dev_f1(report, kept)
dev_ids, dev_probs = ensemble_probabilities(teacher, dev)  # the teacher's test file is dev: its folds' saved probs
position = {row_id: i for i, row_id in enumerate(dev_ids)}
mean = dev_probs[[position[i] for i in ids]]
summary = json.load(open(f"{student}/distill.json"))
print(json.dumps({
    "distill_seconds": int(seconds), "rows": summary["rows"], "epochs_run": summary["epochs_run"],
    "best_checkpoint": summary["best_checkpoint"], "select_half_micro_f1": summary["validation_micro_f1"],
    "report_half_micro_f1": {
        "student_holdout_selected": dev_f1(report, f"{student}/submission.jsonl"),
        "student_fold0_selected": on_report(f"{fold0_student}/submission.jsonl"),
        "ensemble_submission": on_report(f"{teacher}/submission.jsonl"),
        "ensemble_soft_0.5": round(score(np.asarray(rows["labels"]), decide(mean, 0.5, True))["micro_f1"], 4)}}))
PY
