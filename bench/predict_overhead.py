"""What a request costs beyond its forward passes, in one process (issue 47; not a timed test): for each of
`--requests` rows of `--rows`, the time of `ServedModel.predict` on that row (validation, cleaning, encoding,
padding, every checkpoint's forward pass, the vote) against the forward passes alone (the same rows encoded and
padded beforehand, each checkpoint's runtime called on them); then the same for batches of `--batch` rows.

    python bench/predict_overhead.py FOLDER [--rows FILE.jsonl] [--requests 200] [--batch 32]

FOLDER: a run, a stack, a best/ or an export. Prints a markdown table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nikl_emotion.runs.prediction import checkpoint_loader  # noqa: E402
from nikl_emotion.serving.served_model import ServedModel  # noqa: E402
from nikl_emotion.text.batching import pad_table  # noqa: E402


def _forward_batches(models, records, batch_size: int) -> list:
    """Each model's padded batches of `records`, built before any timing (what the forward passes alone read): the
    batches predict itself runs (sorted, cut for a CPU), or one batch padded to its longest row for code older than
    `SharedEncodings` (before issue 47)."""
    try:
        from nikl_emotion.backends.classifier import SharedEncodings
        from nikl_emotion.text.data import records_table
    except ImportError:
        SharedEncodings = None  # noqa: N806 - an older checkout
    batches = []
    for model in models:
        if model.reads_text:
            batches.append(None)
            continue
        if SharedEncodings is not None:
            shared = SharedEncodings(records_table(records, "batch"))
            batches.append([batch for _, batch, _ in shared.batches(model, batch_size)])
            continue
        encoded = model.encode(records)
        table = encoded if isinstance(encoded, pa.Table) else encoded.data.table  # before issue 47: a dataset
        columns = [name for name in model.runtime.input_names if name in table.column_names]
        batches.append([pad_table(table, columns, model.tokenizer.pad_token_id, model.runtime.pad_to_multiple_of)])
    return batches


def _timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def measure(served: ServedModel, groups: list[list[dict]]) -> dict:
    """Median milliseconds per group: the whole predict, and the forward passes alone."""
    whole, forward = [], []
    for group in groups:
        made = _forward_batches(served.models, group, served.batch_size)
        pairs = [(m.runtime, b) for m, b in zip(served.models, made, strict=True) if b is not None]
        forward.append(_timed(lambda pairs=pairs: [run(batch) for run, batches in pairs for batch in batches]))
        whole.append(_timed(lambda group=group: served.predict(group)))
    p50_whole, p50_forward = 1000 * statistics.median(whole), 1000 * statistics.median(forward)
    return {
        "rows": len(groups[0]),
        "groups": len(groups),
        "predict_p50_ms": round(p50_whole, 2),
        "forward_p50_ms": round(p50_forward, 2),
        "ratio": round(p50_whole / p50_forward, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder")
    parser.add_argument("--rows", default=str(ROOT / "data" / "sample_test.jsonl"))
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    with open(args.rows, encoding="utf-8") as handle:
        records = [{"id": row["id"], "input": row["input"]} for row in map(json.loads, filter(str.strip, handle))]
    served = ServedModel(args.folder, checkpoint_loader("cpu"))
    served.predict(records[:8])  # warm-up: first calls allocate
    ones = [[records[i % len(records)]] for i in range(args.requests)]
    batches = [
        [records[(i * args.batch + j) % len(records)] for j in range(args.batch)]
        for i in range(max(1, args.requests // 8))
    ]
    results = [measure(served, ones), measure(served, batches)]
    print("| rows per call | calls | predict p50 ms | forward passes p50 ms | ratio |\n|---|---|---|---|---|")
    for r in results:
        print(f"| {r['rows']} | {r['groups']} | {r['predict_p50_ms']} | {r['forward_p50_ms']} | {r['ratio']} |")
    checkpoints = len(served.models)
    print(json.dumps({"folder": args.folder, "checkpoints": checkpoints, "cpus": os.cpu_count(), "results": results}))


if __name__ == "__main__":
    main()
