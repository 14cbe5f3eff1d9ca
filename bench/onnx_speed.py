"""PyTorch vs ONNX vs ONNX-int8 on CPU: rows/s and dev micro-F1 of one checkpoint, same rows, one run.

python bench/onnx_speed.py [--checkpoint outputs/offline-cpu/fold_0/best] [--batch_size 128] [--write]

Exports the checkpoint twice (fp32, int8) with export.py's code, predicts NIKL dev.jsonl with each path through
the same sorted-batch loop (cleaning and tokenizing done once, not timed), scores each with the official metric.
Reads ../shared/data/nikluge-ea-2023 (or $NIKL_DATA).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
DEFAULT_DATA = os.path.join(os.path.dirname(ROOT), "shared", "data", "nikluge-ea-2023")
MARKERS = ("<!-- onnx:begin -->", "<!-- onnx:end -->")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="outputs/offline-cpu/fold_0/best")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--write", action="store_true", help="write the table into BENCHMARKS.md")
    args = parser.parse_args()
    dev = os.path.join(os.environ.get("NIKL_DATA", DEFAULT_DATA), "dev.jsonl")
    if not os.path.exists(dev):
        sys.exit(f"skipped: {dev} not found (set NIKL_DATA)")
    if not os.path.isdir(args.checkpoint):
        sys.exit(f"{args.checkpoint}: no checkpoint (train one first, e.g. bash bench/offline_recipe.sh)")

    import numpy as np

    from bench.speed import machine, write_block
    from nikl_emotion import EmotionClassifier
    from nikl_emotion.backends.export import export_checkpoint
    from nikl_emotion.decisions.metrics import decide, score
    from nikl_emotion.text.data import load_jsonl

    rows = load_jsonl(dev)
    gold = np.asarray(rows["labels"])
    pytorch = EmotionClassifier.from_pretrained(args.checkpoint, device="cpu")
    encoded = pytorch.encode(rows)
    results = {}
    with tempfile.TemporaryDirectory() as work:
        runners = {
            "PyTorch (fp32, inference_mode)": lambda: pytorch.predict_encoded(encoded, batch_size=args.batch_size)
        }
        for name, int8 in (("ONNX Runtime (fp32)", False), ("ONNX Runtime (int8, dynamic)", True)):
            folder = os.path.join(work, "int8" if int8 else "fp32")
            export_checkpoint(args.checkpoint, folder, int8=int8)
            onnx = EmotionClassifier.from_pretrained(folder)
            runners[name] = lambda c=onnx: c.predict_encoded(encoded, batch_size=args.batch_size)
        reference = None
        for name, run in runners.items():
            run()  # warm-up: first-call allocations and graph optimisation are not throughput
            start = time.perf_counter()
            probs = run()
            seconds = time.perf_counter() - start
            reference = probs if reference is None else reference
            results[name] = {
                "rows_per_s": len(rows) / seconds,
                "micro_f1": score(gold, decide(probs))["micro_f1"],
                "max_diff": float(np.abs(probs - reference).max()),
            }
    lines = [
        f"Machine: {machine()}. Checkpoint `{args.checkpoint}`, NIKL dev.jsonl ({len(rows):,} rows), batch "
        f"{args.batch_size}, sorted batches; cleaning and tokenizing not timed; one run after one warm-up pass.",
        "",
        "| path | rows/s | dev micro-F1 | max abs prob. difference vs PyTorch |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {name} | {r['rows_per_s']:,.0f} | {r['micro_f1']:.4f} | {r['max_diff']:.2e} |"
        for name, r in results.items()
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        command = ("python bench/onnx_speed.py " + " ".join(sys.argv[1:])).strip()
        write_block(MARKERS, "CPU inference: PyTorch vs ONNX vs ONNX-int8 (issue 8)", text, command)


if __name__ == "__main__":
    main()
