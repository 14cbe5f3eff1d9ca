"""Train on NIKL train.jsonl and print dev micro-F1 (the figure recorded in BENCHMARKS.md).

python bench/nikl_dev.py [--config configs/nikl-offline.yaml] [--fold 0] [train.py overrides ...]

Runs train.py with dev.jsonl as the test file, then scores the fold-voted dev predictions with score.py
(with --fold K: that fold's checkpoint alone). Reads ../shared/data/nikluge-ea-2023 (or $NIKL_DATA); exits with
a message when the data is not there.
"""

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA = os.path.join(os.path.dirname(ROOT), "shared", "data", "nikluge-ea-2023")


def run(*args: str) -> str:
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(args[:1])} failed:\n{result.stderr[-4000:]}")
    return result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/nikl-offline.yaml")
    parser.add_argument("--fold", type=int, help="train and score one fold only")
    parser.add_argument("--output_dir", default="outputs/nikl-offline")
    args, overrides = parser.parse_known_args()
    data = os.environ.get("NIKL_DATA", DEFAULT_DATA)
    train, dev = os.path.join(data, "train.jsonl"), os.path.join(data, "dev.jsonl")
    if not (os.path.exists(train) and os.path.exists(dev)):
        sys.exit(f"skipped: NIKL data not found in {data} (set NIKL_DATA)")
    fold = [] if args.fold is None else ["--fold", str(args.fold)]
    start = time.time()
    log = run(
        "train.py",
        args.config,
        "--train_files",
        train,
        "--test_file",
        dev,
        "--output_dir",
        args.output_dir,
        *fold,
        *overrides,
    )
    train_seconds = time.time() - start
    if args.fold is None:
        prediction = os.path.join(args.output_dir, "submission.jsonl")
    else:
        prediction = os.path.join(args.output_dir, f"dev_fold_{args.fold}.jsonl")
        run(
            "ensemble.py",
            "--inputs",
            os.path.join(args.output_dir, f"fold_{args.fold}", "test_probs.jsonl"),
            "--reference",
            dev,
            "--output",
            prediction,
        )
    scored = json.loads(run("score.py", dev, prediction, "--json").strip().splitlines()[-1])
    print(log.strip().splitlines()[-1] if args.fold is not None else log.strip())
    result = {
        "config": args.config,
        "fold": args.fold,
        "overrides": overrides,
        "dev_micro_f1": round(scored["micro_f1"], 4),
        "dev_macro_f1": round(scored["macro_f1"], 4),
        "train_seconds": round(train_seconds),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
