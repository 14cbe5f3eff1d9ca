"""Offline prediction against its padding bound (issue 47; not a timed test): the rows/s of `inference.py --run`'s
prediction (in this process, process start excluded: what its log line reports) against the bound no bookkeeping can
beat, the forward passes alone of every checkpoint over the same length-sorted batches, padded beforehand.

    python bench/padding_bound.py RUN --input FILE.jsonl [--batch_size 128] [--repeats 2]

RUN: a finished run or stack. Prints a markdown table and one JSON line; best of `--repeats` each.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nikl_emotion.backends.classifier import SharedEncodings  # noqa: E402
from nikl_emotion.runs.prediction import PredictionFiles, checkpoint_loader, predict_run_file  # noqa: E402
from nikl_emotion.runs.run_classifier import RunClassifier  # noqa: E402
from nikl_emotion.runs.streaming import chunk_size_for  # noqa: E402
from nikl_emotion.text.data import read_jsonl_chunks, scan_jsonl  # noqa: E402


def forward_bound(run: str, path: str, batch_size: int) -> float:
    """Seconds of the forward passes alone: every checkpoint over every chunk's sorted batches, padded before."""
    classifier = RunClassifier.open(run, checkpoint_loader("cpu"))
    chunk_size = chunk_size_for(scan_jsonl(path).rows)
    chunks = [rows for _, rows in read_jsonl_chunks(path, chunk_size)]
    seconds = 0.0
    for checkpoint in classifier.checkpoints():
        model = classifier.load(checkpoint)
        for rows in chunks:
            if model.reads_text:
                continue
            batches = [batch for _, batch, _ in SharedEncodings(rows).batches(model, batch_size)]
            start = time.perf_counter()
            for batch in batches:
                model.runtime(batch)
            seconds += time.perf_counter() - start
    return seconds


def prediction(run: str, path: str, batch_size: int) -> float:
    """Seconds of `predict_run_file` (what `inference.py --run` runs after its imports)."""
    with tempfile.TemporaryDirectory() as scratch:
        files = PredictionFiles(path, os.path.join(scratch, "out.jsonl"), batch_size=batch_size)
        start = time.perf_counter()
        predict_run_file(run, files)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("--input", required=True)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # per-chunk notes (unknown tokens, truncation) are not the measurement
    rows = scan_jsonl(args.input).rows
    bound = min(forward_bound(args.run, args.input, args.batch_size) for _ in range(args.repeats))
    whole = min(prediction(args.run, args.input, args.batch_size) for _ in range(args.repeats))
    result = {
        "rows": rows,
        "forward_rows_per_s": round(rows / bound, 1),
        "prediction_rows_per_s": round(rows / whole, 1),
        "ratio": round(bound / whole, 3),
    }
    print("| rows | forward passes alone rows/s | inference.py --run rows/s | ratio |\n|---|---|---|---|")
    print(f"| {rows} | {result['forward_rows_per_s']} | {result['prediction_rows_per_s']} | {result['ratio']} |")
    print(json.dumps({"run": args.run, "input": args.input, "cpus": os.cpu_count(), **result}))


if __name__ == "__main__":
    main()
