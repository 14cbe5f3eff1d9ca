"""Speed and memory: the reference recipe against this pipeline's defaults, same rows, same model, one run.

python bench/speed.py [--rows 8192] [--repeats 3] [--batch_size 128] [--big_rows 100000] [--write]

(a) reference recipe: every row padded to max-seq-len 200 in the tokenizer, batches in shuffled (training) or
    file (inference) order, evaluation padded to 200 too;
(b) this pipeline: no padding in `map`, per-batch dynamic padding, length-grouped training batches
    (`train_sampling_strategy: group_by_length`), inference batches sorted by length with the order restored.

Both train the same offline electra-tiny backbone (built once from the training texts) for one epoch with the
same batch size, learning rate, seed and cleaning, through the same Trainer; both predict the NIKL test file.
Each measurement runs in its own process (so its peak RSS is its own); (a) and (b) alternate, `--repeats`
pairs, and the table shows medians and the median of the paired ratios b/a. It also measures peak RSS of
`inference.py` on `--big_rows` rows (the test file repeated, ids made unique) and the process RSS after each of
five folds of `train_fold`. `--write` puts the results into BENCHMARKS.md between the speed and memory markers
(`--repeats 0` measures memory only and leaves the speed block as it is).

Reads ../shared/data/nikluge-ea-2023 (or $NIKL_DATA); exits with a message when the data is not there.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
DEFAULT_DATA = os.path.join(os.path.dirname(ROOT), "shared", "data", "nikluge-ea-2023")
REFERENCE_MAX_LENGTH = 200
SPEED_MARKERS = ("<!-- speed:begin -->", "<!-- speed:end -->")
MEMORY_MARKERS = ("<!-- memory:begin -->", "<!-- memory:end -->")
FOLDS = 5


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def current_rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


# ---------------------------------------------------------------------------------------------------- workers


def _setup(work: str, rows: int):
    """Cleaned training rows (the first `rows` of train.jsonl), test rows, tokenizer and preprocessing."""
    from nikl_emotion.backends.backbone import load_tokenizer
    from nikl_emotion.text.cleaning import CleaningOptions
    from nikl_emotion.text.data import load_jsonl
    from nikl_emotion.text.preprocessing import Preprocessing, clean

    preprocessing = Preprocessing(CleaningOptions(remove_others=True, cleanse=True), "pair", REFERENCE_MAX_LENGTH)
    train = clean(load_jsonl(os.path.join(work, "train.jsonl")), preprocessing)
    test = clean(load_jsonl(os.path.join(work, "test.jsonl"), "optional"), preprocessing)
    tokenizer = load_tokenizer(os.path.join(work, "backbone"))
    return train, test, tokenizer, preprocessing


def _training_args(work: str, batch_size: int, grouped: bool):
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=os.path.join(work, "trainer"),
        num_train_epochs=1,
        learning_rate=1e-3,
        weight_decay=0.1,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=batch_size,
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=42,
        logging_strategy="no",
        remove_unused_columns=False,
        train_sampling_strategy="group_by_length" if grouped else "random",
    )


def _reference_encode(rows, tokenizer):
    """The reference's tokenization: pad every row to 200 in the preprocessing step."""
    from nikl_emotion.text.encoding import segments

    def encode_batch(batch):
        pairs = [
            segments(t, g, b, e, "pair")
            for t, g, b, e in zip(batch["text"], batch["target"], batch["target_begin"], batch["target_end"])
        ]
        # the reference encodes every row as a pair; a null target becomes an empty second segment
        return tokenizer(
            [a for a, _ in pairs],
            [b or "" for _, b in pairs],
            truncation=True,
            max_length=REFERENCE_MAX_LENGTH,
            padding="max_length",
        )

    return rows.map(encode_batch, batched=True, desc="reference tokenizing")


def worker_train(work: str, recipe: str, rows: int, batch_size: int) -> dict:
    import numpy as np
    from transformers import default_data_collator, set_seed

    from nikl_emotion.backends.backbone import load_model
    from nikl_emotion.backends.emotion_trainer import TRAINER_COLUMNS, EmotionTrainer, make_loss
    from nikl_emotion.base.config import LossArguments
    from nikl_emotion.text.batching import PaddingCollator
    from nikl_emotion.text.preprocessing import encode

    train, _, tokenizer, preprocessing = _setup(work, rows)
    set_seed(42)
    model = load_model(os.path.join(work, "backbone"), tokenizer)
    if recipe == "reference":
        encoded = _reference_encode(train, tokenizer)
        collator = default_data_collator
    else:
        encoded = encode(train, tokenizer, preprocessing)
        collator = PaddingCollator(tokenizer)
    columns = [c for c in TRAINER_COLUMNS if c in encoded.column_names]
    trainer = EmotionTrainer(
        model=model,
        args=_training_args(work, batch_size, grouped=recipe == "pipeline"),
        train_dataset=encoded.select_columns(columns),
        processing_class=tokenizer,
        data_collator=collator,
        loss_fn=make_loss(LossArguments(), np.asarray(encoded["labels"])),
    )
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    return {"rows": len(encoded), "seconds": seconds, "per_s": len(encoded) / seconds, "peak_rss_mb": peak_rss_mb()}


def worker_predict(work: str, recipe: str, rows: int, batch_size: int) -> dict:
    import numpy as np
    import torch

    from nikl_emotion import EmotionClassifier
    from nikl_emotion.backends.backbone import load_model
    from nikl_emotion.text.preprocessing import encode

    _, test, tokenizer, preprocessing = _setup(work, rows)
    model = load_model(os.path.join(work, "backbone"), tokenizer).eval()
    if recipe == "reference":
        encoded = _reference_encode(test, tokenizer).with_format(
            "torch", columns=["input_ids", "attention_mask", "token_type_ids"]
        )
        start = time.perf_counter()
        outputs = []
        with torch.inference_mode():  # file order, every batch 200 wide
            for first in range(0, len(encoded), batch_size):
                outputs.append(torch.sigmoid(model(**encoded[first : first + batch_size]).logits))
        probs = torch.cat(outputs).numpy()
        seconds = time.perf_counter() - start
    else:
        encoded = encode(test, tokenizer, preprocessing)
        start = time.perf_counter()
        probs = EmotionClassifier.from_model(model, tokenizer, preprocessing).predict_encoded(
            encoded, batch_size=batch_size
        )
        seconds = time.perf_counter() - start
    assert probs.shape == (len(test), 8) and np.isfinite(probs).all()
    return {"rows": len(test), "seconds": seconds, "per_s": len(test) / seconds, "peak_rss_mb": peak_rss_mb()}


def worker_folds(work: str, rows: int, batch_size: int) -> dict:
    """Process RSS after each of five folds of `train_fold` (one epoch each): the loop must not keep old folds."""
    import gc

    import numpy as np

    from nikl_emotion.backends.encoder_backend import EncoderBackend
    from nikl_emotion.backends.fold_backend import FoldData
    from nikl_emotion.base.config import (
        BudgetArguments,
        DataArguments,
        DecisionArguments,
        FoldArguments,
        LossArguments,
        ModelArguments,
        RunSettings,
        StoppingArguments,
        TechniqueArguments,
    )
    from nikl_emotion.text.preprocessing import encode
    from nikl_emotion.training.folds import make_folds

    train, test, tokenizer, preprocessing = _setup(work, rows)
    encoded, encoded_test = encode(train, tokenizer, preprocessing), encode(test, tokenizer, preprocessing)
    args = _training_args(work, batch_size, grouped=True)
    args.eval_strategy = args.save_strategy = "epoch"
    args.output_dir = os.path.join(work, "folds")
    folds = make_folds(np.asarray(encoded["labels"]), 5, 42)
    settings = RunSettings(
        ModelArguments(),
        DataArguments(),
        FoldArguments(),
        StoppingArguments(early_stopping_patience=0),
        BudgetArguments(),
        DecisionArguments(),
        LossArguments(),
        TechniqueArguments(),
        args,
    )
    after = []
    for k in range(FOLDS):
        data = FoldData(k, *folds[k], encoded, encoded_test, os.path.join(work, "backbone"), preprocessing)
        EncoderBackend().train_fold(settings, data)
        gc.collect()
        after.append(round(current_rss_mb()))
    return {"rss_after_fold_mb": after}


# ---------------------------------------------------------------------------------------------------- driver


def run_worker(*args: str) -> dict:
    result = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--worker", *args], cwd=ROOT, capture_output=True, text=True
    )
    if result.returncode != 0:
        sys.exit(f"worker {' '.join(args)} failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def worker_big(work: str, big_rows: int) -> dict:
    """inference.py as a user runs it, on `big_rows` rows (the test file repeated, ids made unique). Run from its
    own worker process, so RUSAGE_CHILDREN holds that one child's peak RSS and no other's."""
    big = os.path.join(work, "big.jsonl")
    with open(os.path.join(work, "test.jsonl"), encoding="utf-8") as handle:
        lines = [json.loads(line) for line in handle if line.strip()]
    with open(big, "w", encoding="utf-8") as handle:
        for n in range(big_rows):
            row = lines[n % len(lines)]
            handle.write(json.dumps(dict(row, id=f"{row['id']}-{n}"), ensure_ascii=False) + "\n")
    output = os.path.join(work, "big_out.jsonl")
    start = time.perf_counter()
    result = subprocess.run(
        [
            sys.executable,
            "inference.py",
            "--checkpoint",
            os.path.join(work, "checkpoint"),
            "--input",
            big,
            "--output",
            output,
            "--probs",
            os.path.join(work, "big_probs.jsonl"),
            "--batch_size",
            "256",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"inference.py failed:\n{result.stderr[-4000:]}")
    with open(output, encoding="utf-8") as handle:
        written = sum(1 for _ in handle)
    if written != big_rows:
        sys.exit(f"inference.py wrote {written} of {big_rows} rows")
    return {
        "rows": big_rows,
        "seconds": seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }


def prepare(work: str, data: str, rows: int) -> None:
    """Train subset, test file, the offline backbone, and a saved checkpoint for the inference.py run."""
    from nikl_emotion.backends.backbone import build_offline_backbone, load_model, load_tokenizer
    from nikl_emotion.text.data import load_jsonl
    from nikl_emotion.text.preprocessing import Preprocessing

    with (
        open(os.path.join(data, "train.jsonl"), encoding="utf-8") as src,
        open(os.path.join(work, "train.jsonl"), "w", encoding="utf-8") as dst,
    ):
        for n, line in enumerate(src):
            if n >= rows:
                break
            dst.write(line)
    with (
        open(os.path.join(data, "test.jsonl"), encoding="utf-8") as src,
        open(os.path.join(work, "test.jsonl"), "w", encoding="utf-8") as dst,
    ):
        dst.write(src.read())
    texts = load_jsonl(os.path.join(work, "train.jsonl"))["text"]
    build_offline_backbone(texts, os.path.join(work, "backbone"), "offline:electra-tiny", 16000, 42)
    tokenizer = load_tokenizer(os.path.join(work, "backbone"))
    model = load_model(os.path.join(work, "backbone"), tokenizer)
    checkpoint = os.path.join(work, "checkpoint")
    model.save_pretrained(checkpoint)
    tokenizer.save_pretrained(checkpoint)
    from nikl_emotion.text.cleaning import CleaningOptions

    Preprocessing(CleaningOptions(remove_others=True, cleanse=True), "pair", REFERENCE_MAX_LENGTH).save(checkpoint)


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    threads = f"({torch.get_num_threads()} threads)"
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} {threads}, Python {platform.python_version()}"


def speed_table(results: dict, args) -> str:
    def median(recipe, kind, key="per_s"):
        return statistics.median(r[key] for r in results[kind][recipe])

    lines = [
        f"Machine: {machine()}. Rows: first {args.rows} of NIKL train.jsonl (training, 1 epoch), the 4,748 rows of "
        f"test.jsonl (inference). Offline electra-tiny, batch {args.batch_size}, {args.repeats} paired runs, medians.",
        "",
        "| measurement | (a) reference recipe | (b) this pipeline | b/a (median of paired ratios) | peak RSS a / b |",
        "|---|---|---|---|---|",
    ]
    for kind, unit in (("train", "samples/s"), ("predict", "rows/s")):
        ratios = [b["per_s"] / a["per_s"] for a, b in zip(results[kind]["reference"], results[kind]["pipeline"])]
        runs = ", ".join(f"{r:.1f}" for r in ratios)
        lines.append(
            f"| {'training' if kind == 'train' else 'inference'} | {median('reference', kind):,.0f} {unit} | "
            f"{median('pipeline', kind):,.0f} {unit} | **{statistics.median(ratios):.1f}x** ({runs}) | "
            f"{median('reference', kind, 'peak_rss_mb'):,.0f} / {median('pipeline', kind, 'peak_rss_mb'):,.0f} MB |"
        )
    return "\n".join(lines)


def memory_text(results: dict, args) -> str:
    lines = [f"Machine: {machine()}."]
    big = results.get("big")
    if big:
        lines += [
            "",
            f"`inference.py` on {big['rows']:,} rows (test.jsonl repeated): peak RSS {big['peak_rss_mb']:,.0f} MB, "
            f"{big['rows'] / big['seconds']:,.0f} rows/s end to end (loading, cleaning, tokenizing, writing included).",
        ]
    folds = results.get("folds")
    if folds:
        lines += [
            "",
            f"Process RSS after each of {FOLDS} `train_fold` calls ({args.rows} rows, 1 epoch each): "
            f"{' / '.join(str(v) for v in folds['rss_after_fold_mb'])} MB.",
        ]
    return "\n".join(lines)


def write_block(markers: tuple[str, str], title: str, text: str, command: str) -> None:
    path = os.path.join(ROOT, "BENCHMARKS.md")
    with open(path, encoding="utf-8") as handle:
        content = handle.read()
    block = f"{markers[0]}\n`{command}`\n\n{text}\n{markers[1]}"
    pattern = re.compile(re.escape(markers[0]) + ".*?" + re.escape(markers[1]), re.S)
    if pattern.search(content):
        content = pattern.sub(lambda _: block, content)
    else:
        content = content.rstrip() + f"\n\n## {title}\n\n" + block + "\n"
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(content)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=8192, help="training rows (the first N of train.jsonl)")
    parser.add_argument("--repeats", type=int, default=3)
    # the reference's best recipe trained with batch 128 and its inference command used 128
    parser.add_argument("--batch_size", type=int, default=128, help="training and inference batch, both recipes")
    parser.add_argument("--big_rows", type=int, default=100_000, help="rows for the inference memory run (0: skip)")
    parser.add_argument("--no_folds", action="store_true", help="skip the memory-across-folds run")
    parser.add_argument("--write", action="store_true", help="write the table into BENCHMARKS.md")
    parser.add_argument("--work_dir", help="keep the rows, backbone and caches here (default: a temporary folder)")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, work, *rest = args.worker
        if kind == "folds":
            result = worker_folds(work, args.rows, args.batch_size)
        elif kind == "big":
            result = worker_big(work, args.big_rows)
        else:
            result = (worker_train if kind == "train" else worker_predict)(work, rest[0], args.rows, args.batch_size)
        print(json.dumps(result))
        return
    data = os.environ.get("NIKL_DATA", DEFAULT_DATA)
    if not all(os.path.exists(os.path.join(data, name)) for name in ("train.jsonl", "test.jsonl")):
        sys.exit(f"skipped: NIKL data not found in {data} (set NIKL_DATA)")
    with (
        contextlib.nullcontext(args.work_dir) if args.work_dir else tempfile.TemporaryDirectory(prefix="nikl-speed-")
    ) as work:
        os.makedirs(work, exist_ok=True)
        os.environ["HF_DATASETS_CACHE"] = os.path.join(work, "datasets-cache")  # both recipes start from a cold cache
        prepare(work, data, args.rows)
        results: dict = {"train": {"reference": [], "pipeline": []}, "predict": {"reference": [], "pipeline": []}}
        common = ["--rows", str(args.rows), "--batch_size", str(args.batch_size)]
        for repeat in range(args.repeats):
            # alternate which recipe goes first, so a drift in machine speed does not favour one
            recipes = ("reference", "pipeline") if repeat % 2 == 0 else ("pipeline", "reference")
            for kind in ("train", "predict"):
                for recipe in recipes:
                    result = run_worker(kind, work, recipe, *common)
                    results[kind][recipe].append(result)
                    print(
                        f"repeat {repeat + 1} {kind:7s} {recipe:9s} {result['per_s']:8.0f}/s  "
                        f"peak {result['peak_rss_mb']:.0f} MB",
                        flush=True,
                    )
        if args.big_rows:
            results["big"] = run_worker("big", work, "--big_rows", str(args.big_rows))
            print(f"inference.py {args.big_rows} rows: peak {results['big']['peak_rss_mb']:.0f} MB", flush=True)
        if not args.no_folds:
            results["folds"] = run_worker("folds", work, *common)
            print(f"RSS after folds: {results['folds']['rss_after_fold_mb']}", flush=True)
    command = ("python bench/speed.py " + " ".join(sys.argv[1:])).strip()
    if args.repeats:
        text = speed_table(results, args)
        print(text)
        if args.write:
            write_block(SPEED_MARKERS, "Speed: reference recipe vs this pipeline", text, command)
    if "big" in results or "folds" in results:
        text = memory_text(results, args)
        print(text)
        if args.write:
            write_block(MEMORY_MARKERS, "Memory: 100k-row inference, RSS across folds", text, command)


if __name__ == "__main__":
    main()
