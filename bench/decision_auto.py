"""Does `decision: auto` pick well? Each candidate rule's nested out-of-fold score next to its held-out score.

python bench/decision_auto.py nikl   # train.jsonl -> dev.jsonl, configs/nikl-offline.yaml (5 folds, ~25 min on 2 cores)
python bench/decision_auto.py kote   # KOTE val.jsonl split 80/20 by a seeded shuffle: 4,000 to train, 1,000 held out

Trains one run (`decision: auto`), then applies every candidate rule of its summary.json (as the run refitted it on
all OOF rows) to the folds' probabilities on the held-out file and scores them with the official metric. Prints a
markdown table (BENCHMARKS.md) and a JSON line. Reads ../shared/data (or $SHARED_DATA); exits with a message when
the data is not there. Nothing here chooses anything on the held-out rows: they are scored once per rule.
"""

import argparse
import json
import os
import random
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA = os.path.join(os.path.dirname(ROOT), "shared", "data")


def run(*args: str) -> str:
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(args[:1])} failed:\n{result.stderr[-4000:]}")
    return result.stdout


def kote_split(source: str, folder: str, held_out: int = 1000, seed: int = 42) -> tuple[str, str]:
    """KOTE's val.jsonl as a training file and a held-out file (rows shuffled with a fixed seed)."""
    with open(source, encoding="utf-8") as handle:
        lines = [line for line in handle if line.strip()]
    random.Random(seed).shuffle(lines)
    os.makedirs(folder, exist_ok=True)
    paths = (os.path.join(folder, "kote_train.jsonl"), os.path.join(folder, "kote_heldout.jsonl"))
    for path, part in zip(paths, (lines[held_out:], lines[:held_out])):
        with open(path, "w", encoding="utf-8") as handle:
            handle.writelines(part)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=["nikl", "kote"])
    parser.add_argument("--config", default="configs/nikl-offline.yaml")
    parser.add_argument("--output_dir")
    args, overrides = parser.parse_known_args()
    data = os.environ.get("SHARED_DATA", DEFAULT_DATA)
    out = args.output_dir or os.path.join("outputs", f"decision-{args.dataset}")
    if args.dataset == "nikl":
        train, heldout = (os.path.join(data, "nikluge-ea-2023", name) for name in ("train.jsonl", "dev.jsonl"))
    else:
        source = os.path.join(data, "kote", "val.jsonl")
        if not os.path.exists(source):
            sys.exit(f"skipped: {source} not found (set SHARED_DATA)")
        train, heldout = kote_split(source, os.path.join(ROOT, out + "-data"))
    if not (os.path.exists(train) and os.path.exists(heldout)):
        sys.exit(f"skipped: {train} or {heldout} not found (set SHARED_DATA)")
    start = time.time()
    log = run(
        "train.py",
        args.config,
        "--train_files",
        train,
        "--test_file",
        heldout,
        "--output_dir",
        out,
        "--decision",
        "auto",
        *overrides,
    )
    seconds = time.time() - start
    summary = json.load(open(os.path.join(ROOT, out, "summary.json"), encoding="utf-8"))
    decision = summary["decision"]
    folds = [os.path.join(out, f"fold_{f['fold']}", "test_probs.jsonl") for f in summary["folds"]]
    rows = []
    for candidate in decision["candidates"]:
        rule_file = os.path.join(out, f"rule_{candidate['name']}.json")
        with open(os.path.join(ROOT, rule_file), "w", encoding="utf-8") as handle:
            json.dump(candidate["rule"], handle)
        prediction = os.path.join(out, f"heldout_{candidate['name']}.jsonl")
        run("ensemble.py", "--inputs", *folds, "--reference", heldout, "--output", prediction, "--decision", rule_file)
        scored = json.loads(run("score.py", heldout, prediction, "--json").strip().splitlines()[-1])
        rows.append({**candidate, "heldout_micro_f1": scored["micro_f1"], "heldout_macro_f1": scored["macro_f1"]})
    print(log.strip().splitlines()[-1])
    print(f"\n{args.dataset}: {len(folds)} folds, {seconds:.0f} s; decision: auto chose **{decision['chosen']}**\n")
    print("| rule | nested OOF micro-F1 | gain ± s.e. | held-out micro-F1 | held-out macro-F1 |")
    print("|---|---|---|---|---|")
    for row in rows:
        name = f"**{row['name']}** (chosen)" if row["name"] == decision["chosen"] else row["name"]
        print(
            f"| {name} | {row['micro_f1']:.4f} | {row['gain']:+.4f} ± {row['gain_se']:.4f} | "
            f"{row['heldout_micro_f1']:.4f} | {row['heldout_macro_f1']:.4f} |"
        )
    print(
        json.dumps(
            {
                "dataset": args.dataset,
                "chosen": decision["chosen"],
                "seconds": round(seconds),
                "rows": [
                    {k: r[k] for k in ("name", "micro_f1", "gain", "gain_se", "heldout_micro_f1", "heldout_macro_f1")}
                    for r in rows
                ],
            }
        )
    )


if __name__ == "__main__":
    main()
