#!/usr/bin/env bash
# The README's quickstart commands into a scratch folder, then the sha256 of every file they write that a user reads
# (submissions, probabilities, decision files, summary). Run it on two revisions to show a refactor changed no output:
#   bash bench/quickstart_digest.sh > after.txt
#   git worktree add /tmp/before REV && (cd /tmp/before && bash bench/quickstart_digest.sh) > before.txt
#   diff before.txt after.txt
# The code is the checkout the script sits in; OUT (default: a temporary folder) receives the run.
set -euo pipefail
# one thread: with two, the same revision's quickstart differs from run to run in the last digits (CPU kernels that
# split a sum between threads), and a digest compares nothing; run it with the machine to itself
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 MKL_DYNAMIC=FALSE
cd "$(dirname "$0")/.."
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
run=$OUT/quickstart
# the offline backbone's WordPiece vocabulary is not the same from one run to the next (the tokenizers trainer
# breaks ties between equally frequent pieces in hash order): SEED_RUN=OTHER_OUT/quickstart starts this run from
# another run's set-up (its claimed folder and backbone, no fold), so two revisions are compared on one vocabulary
if [ -n "${SEED_RUN:-}" ]; then
    mkdir -p "$run" && cp -r "$SEED_RUN/backbone" "$run/backbone"
    cp "$SEED_RUN/config.yaml" "$SEED_RUN/inputs.json" "$SEED_RUN/.nikl_emotion_folder.json" "$run/"
fi
python train.py configs/quickstart.yaml --output_dir "$run" > "$OUT/train.log" 2>&1
python inference.py --checkpoint "$run"/fold_*/best --input data/sample_dev.jsonl \
    --output "$run/dev_submission.jsonl" --probs "$run/dev_probs.jsonl" > "$OUT/inference.log" 2>&1
python inference.py --run "$run" --input data/sample_dev.jsonl --output "$run/dev_run_submission.jsonl" \
    --probs "$run/dev_run_probs.jsonl" > "$OUT/inference_run.log" 2>&1
python ensemble.py --inputs "$run"/fold_*/test_probs.jsonl --reference data/sample_test.jsonl \
    --output "$run/test_submission_voted.jsonl" > "$OUT/ensemble.log" 2>&1
python score.py data/sample_dev.jsonl "$run/dev_submission.jsonl" --per-label > "$OUT/score.txt"
cd "$run"
sha256sum submission.jsonl oof.jsonl decision.json thresholds.json dev_submission.jsonl dev_probs.jsonl \
    dev_run_submission.jsonl dev_run_probs.jsonl test_submission_voted.jsonl fold_*/val_probs.jsonl \
    fold_*/test_probs.jsonl
sha256sum "$OUT/score.txt" | sed "s|$OUT/||"
