#!/usr/bin/env bash
# Streaming, sharded inference (issue 37): peak memory against the file's size, and the same bytes from 1 and 4
# processes. Big files are made by repeating the NIKL rows (fresh ids). Checkpoints: a small one trained here (the
# quickstart's offline backbone, 1 epoch, fold 0 of NIKL train: fast enough for 100k and 1M rows), the recipe's
# neural fold model (10k rows, 1 and 4 processes) and the n-gram member's (10k rows, 1 and 4 processes).
# Peak RSS is GNU time's maximum resident set (of the largest process under accelerate launch).
# Usage: bash bench/sharded_inference.sh [NEURAL_BEST]   (default: fold 0 of bench/mlm_levers.sh's "today")
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${NIKL_DATA:-../shared/data/nikluge-ea-2023}
[ -f "$DATA/train.jsonl" ] || { echo "skipped: NIKL data not found in $DATA (set NIKL_DATA)"; exit 0; }
OUT=outputs/sharded; mkdir -p "$OUT"
SMALL=$OUT/small-run/fold_0/best NGRAM=$OUT/ngram-run/fold_0/best
[ -d "$SMALL" ] || python train.py configs/quickstart.yaml --train_files "$DATA/train.jsonl" --test_file "$DATA/dev.jsonl" \
  --output_dir "$OUT/small-run" --num_folds 5 --fold 0 --num_train_epochs 1 > /dev/null
[ -d "$NGRAM" ] || python train.py configs/offline-cpu-ngram.yaml --train_files "$DATA/train.jsonl" \
  --test_file "$DATA/dev.jsonl" --output_dir "$OUT/ngram-run" --fold 0 > /dev/null
NEURAL=${1:-outputs/levers/ft-today-6min/fold_0/best}
[ -d "$NEURAL" ] || { echo "$NEURAL: not found (give a fold's best/ folder)"; exit 1; }
for rows in 10000 100000 1000000; do
  [ -f "$OUT/rows-$rows.jsonl" ] || python - "$DATA" "$rows" "$OUT/rows-$rows.jsonl" <<'PY'
import json, sys
data, rows, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
source = [json.loads(line) for name in ("train", "dev", "test") for line in open(f"{data}/{name}.jsonl", encoding="utf-8")]
with open(path, "w", encoding="utf-8") as handle:
    for i in range(rows):
        row = source[i % len(source)]
        handle.write(json.dumps({"id": f"row-{i}", "input": row["input"], "output": ""}, ensure_ascii=False) + "\n")
PY
done
measure() {  # NAME PROCESSES CHECKPOINT ROWS [CHUNK_SIZE]
  local launch=(python) out="$OUT/$1.jsonl"
  [ "$2" -gt 1 ] && launch=(accelerate launch --multi_gpu --num_processes "$2" --num_machines 1 --mixed_precision no --dynamo_backend no)
  OMP_NUM_THREADS=$(( $(nproc) / $2 > 0 ? $(nproc) / $2 : 1 )) /usr/bin/time -f "%M %e" -o "$OUT/$1.time" \
    "${launch[@]}" inference.py --checkpoint "$3" --input "$OUT/rows-$4.jsonl" --output "$out" --probs "$OUT/$1.probs.jsonl" \
    --device cpu --chunk_size "${5:-65536}" > /dev/null 2> "$OUT/$1.log"
  read -r kb seconds < "$OUT/$1.time"
  echo "{\"run\": \"$1\", \"processes\": $2, \"rows\": $4, \"peak_rss_mb\": $((kb / 1024)), \"seconds\": $seconds, \"rows_per_s\": $(python -c "print(round($4 / $seconds))")}"
}
measure small-100k 1 "$SMALL" 100000
measure small-1m 1 "$SMALL" 1000000
# the same bytes from 1 and 4 processes: chunks of 1024 rows, so each of the 4 gets several
measure neural-10k 1 "$NEURAL" 10000 1024
measure neural-10k-4proc 4 "$NEURAL" 10000 1024
measure ngram-10k 1 "$NGRAM" 10000 1024
measure ngram-10k-4proc 4 "$NGRAM" 10000 1024
for pair in "neural-10k neural-10k-4proc" "ngram-10k ngram-10k-4proc"; do
  set -- $pair
  cmp -s "$OUT/$1.jsonl" "$OUT/$2.jsonl" && cmp -s "$OUT/$1.probs.jsonl" "$OUT/$2.probs.jsonl" \
    && echo "$1 vs $2: the same bytes (submission and probabilities)" || echo "$1 vs $2: DIFFERENT"
done
