#!/usr/bin/env bash
# The offline recipe as one command on NIKL (BENCHMARKS.md, issue 50): `recipe.py` on a data folder where dev.jsonl is
# the predicted file (so recipe.json scores the stack on it, once, at the end) and the test file's text is only text
# for post-training, as bench/offline_recipe.sh did with its five commands.
# Usage: bash bench/recipe_hour.sh [MINUTES] [SEED]   (reads ../shared/data/nikluge-ea-2023 or $NIKL_DATA)
#   writes outputs/recipe-MINUTESm-sSEED (its recipe.json, the plan table on stdout) and the wall time of the command;
#   $RECIPE_OUT names another output folder (bench/recipe_under_load.py uses it).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${NIKL_DATA:-../shared/data/nikluge-ea-2023}
[ -f "$DATA/train.jsonl" ] || { echo "skipped: NIKL data not found in $DATA (set NIKL_DATA)"; exit 0; }
MINUTES=${1:-60} SEED=${2:-42}
FOLDER=outputs/nikl-dev-predicted   # a fixed path: the same command again resumes the recipe
mkdir -p "$FOLDER"
ln -sf "$(realpath "$DATA/train.jsonl")" "$FOLDER/train.jsonl"
ln -sf "$(realpath "$DATA/dev.jsonl")" "$FOLDER/dev.jsonl"
ln -sf "$(realpath "$DATA/test.jsonl")" "$FOLDER/test-text.jsonl"   # not test.jsonl: dev is the predicted file
OUT=${RECIPE_OUT:-outputs/recipe-${MINUTES}m-s$SEED}
start=$(date +%s.%N)
python recipe.py "$FOLDER" --minutes "$MINUTES" --seed "$SEED" --output_dir "$OUT"
end=$(date +%s.%N)
python -c "import sys; s = float(sys.argv[2]) - float(sys.argv[1]); print(f'wall {s:.0f} s = {s / 60 / float(sys.argv[3]):.3f} of the budget')" \
  "$start" "$end" "$MINUTES"
