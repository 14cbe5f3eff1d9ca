"""PyTorch vs ONNX vs ONNX-int8 on CPU: rows/s and dev micro-F1 of one checkpoint, same rows, one run.

python bench/onnx_speed.py [--checkpoint outputs/offline-cpu/fold_0/best] [--batch_size 128] [--write]
python bench/onnx_speed.py --size base|large [--rows 512]

Exports the checkpoint twice (fp32, int8) with export.py's code, predicts NIKL dev.jsonl with each path through
the same sorted-batch loop (cleaning and tokenizing done once, not timed), scores each with the official metric.
`--size` measures speed at real sizes instead: a checkpoint with KcELECTRA-base's dimensions and vocabulary size
(`base`: ELECTRA, 768 x 12 layers, 54,343 tokens) or klue/roberta-large's (`large`: RoBERTa, 1024 x 24 layers,
32,000 tokens), random weights (speed needs no training; its F1 means nothing), a WordPiece tokenizer trained on
NIKL train, on the first `--rows` dev rows. Reads ../shared/data/nikluge-ea-2023 (or $NIKL_DATA).
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


REAL_SIZES = {  # the hub models' own dimensions (config.json of beomi/KcELECTRA-base-v2022, klue/roberta-large)
    "base": (
        "electra",
        {
            "vocab_size": 54343,
            "embedding_size": 768,
            "hidden_size": 768,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "intermediate_size": 3072,
            "max_position_embeddings": 512,
        },
    ),
    "large": (
        "roberta",
        {
            "vocab_size": 32000,
            "hidden_size": 1024,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "intermediate_size": 4096,
            "max_position_embeddings": 514,
            "type_vocab_size": 1,
            "pad_token_id": 1,
        },
    ),
}


def real_size_checkpoint(size: str, folder: str, texts: list[str]) -> str:
    """A `best/`-shaped folder at a real size: random weights, the pipeline's labels, pair input, max length 200."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from nikl_emotion.backends.backbone import train_wordpiece_tokenizer
    from nikl_emotion.base.labels import ID2LABEL, LABEL2ID
    from nikl_emotion.text.cleaning import CleaningOptions
    from nikl_emotion.text.preprocessing import Preprocessing

    family, dims = REAL_SIZES[size]
    tokenizer = train_wordpiece_tokenizer(texts, vocab_size=dims["vocab_size"])
    if family == "roberta":  # klue/roberta's tokenizer makes no segment ids for its one-type model
        tokenizer.model_input_names = ["input_ids", "attention_mask"]
    labels = {"id2label": ID2LABEL, "label2id": LABEL2ID, "problem_type": "multi_label_classification"}
    # WordPiece's trainer may keep a few hundred tokens past its target (the alphabet): every id must have a row
    dims = {**dims, "vocab_size": max(dims["vocab_size"], len(tokenizer))}
    config = AutoConfig.for_model(family, **dims, **labels)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    Preprocessing(CleaningOptions(), "pair", 200).save(folder)
    return folder


def real_size(args) -> None:
    """rows/s of PyTorch fp32, ONNX fp32 and ONNX int8 at a real size, on the same encoded rows."""
    import numpy as np

    from bench.speed import machine
    from nikl_emotion import EmotionClassifier
    from nikl_emotion.backends.export import export_checkpoint
    from nikl_emotion.text.data import load_jsonl

    data = os.environ.get("NIKL_DATA", DEFAULT_DATA)
    rows = load_jsonl(os.path.join(data, "dev.jsonl")).select(range(args.rows))
    texts = load_jsonl(os.path.join(data, "train.jsonl"))["text"]
    with tempfile.TemporaryDirectory() as work:
        best = real_size_checkpoint(args.size, os.path.join(work, "best"), texts)
        pytorch = EmotionClassifier.from_pretrained(best, device="cpu")
        encoded = pytorch.encode(rows)
        runners = {"PyTorch (fp32)": pytorch}
        for name, int8 in (("ONNX Runtime (fp32)", False), ("ONNX Runtime (int8, dynamic)", True)):
            folder = os.path.join(work, "int8" if int8 else "fp32")
            export_checkpoint(best, folder, int8=int8)
            runners[name] = EmotionClassifier.from_pretrained(folder)
        results, reference = {}, None
        for name, model in runners.items():
            model.predict_encoded(encoded.select(range(min(64, len(rows)))), batch_size=args.batch_size)  # warm-up
            start = time.perf_counter()
            probs = model.predict_encoded(encoded, batch_size=args.batch_size)
            results[name] = len(rows) / (time.perf_counter() - start)
            reference = probs if reference is None else reference
            print(f"{name}: {results[name]:.1f} rows/s, max abs difference {np.abs(probs - reference).max():.2e}")
    base = results["PyTorch (fp32)"]
    print(f"\nMachine: {machine()}. Size {args.size}, {args.rows} NIKL dev rows, batch {args.batch_size}.")
    print("| path | rows/s | vs PyTorch fp32 |\n|---|---|---|")
    for name, rate in results.items():
        print(f"| {name} | {rate:,.1f} | {rate / base:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="outputs/offline-cpu/fold_0/best")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--write", action="store_true", help="write the table into BENCHMARKS.md")
    parser.add_argument("--size", choices=sorted(REAL_SIZES), help="a random-weight checkpoint of a real size")
    parser.add_argument("--rows", type=int, default=512, help="with --size: how many dev rows")
    args = parser.parse_args()
    if args.size:
        return real_size(args)
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
