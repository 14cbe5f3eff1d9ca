"""Sharded inference against one process over file sizes (issue 47, item 5; not a timed test): wall seconds of
`python inference.py --run RUN` and of `accelerate launch --multi_gpu --num_processes 2 inference.py --run RUN` on
files of N rows (NIKL rows cycled, ids made unique), default chunks, `OMP_NUM_THREADS=1` per process, and whether
both wrote the same bytes.

    python bench/shard_curve.py RUN --rows FILE.jsonl [--sizes 10000 40000 160000 1000000]

Prints a markdown table (wall seconds, the prediction's own seconds from the log, the ratio two / one) and one JSON
line. Each size's file is written to a scratch folder and removed after.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TWO_PROCESSES = ("accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1")
TWO_PROCESSES += ("--mixed_precision", "no", "--dynamo_backend", "no")


def write_rows(source: str, rows: int, path: str) -> None:
    """`rows` rows of `source`, cycled, each id suffixed with its copy's number (ids stay unique)."""
    with open(source, encoding="utf-8") as handle:
        lines = [json.loads(line) for line in handle if line.strip()]
    with open(path, "w", encoding="utf-8") as out:
        for number, row in zip(range(rows), itertools.cycle(lines), strict=False):
            copy = number // len(lines)
            out.write(json.dumps({**row, "id": f"{row['id']}-{copy}"}, ensure_ascii=False) + "\n")


def timed(command: list[str], output: str) -> dict:
    """Wall seconds of `command` writing `output`, and the prediction seconds its log gives."""
    began = time.monotonic()
    result = subprocess.run(
        command + ["--output", output],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    wall = time.monotonic() - began
    if result.returncode:
        raise SystemExit(result.stderr[-3000:])
    predicted = re.search(r"predicted \d+ rows .*? in ([\d.]+) s", result.stderr)
    return {"wall_s": round(wall, 1), "prediction_s": float(predicted.group(1)) if predicted else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("--rows", required=True, help="a jsonl file whose rows are cycled")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 40_000, 160_000, 1_000_000])
    args = parser.parse_args()
    results = []
    print(
        "| rows | one process: wall s (prediction s) | two processes: wall s (prediction s) | two / one | same bytes |"
    )
    print("|---|---|---|---|---|")
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as scratch:
            source = os.path.join(scratch, "rows.jsonl")
            write_rows(args.rows, size, source)
            base = ["inference.py", "--run", args.run, "--input", source]
            one = timed([sys.executable, *base], os.path.join(scratch, "one.jsonl"))
            two = timed([*TWO_PROCESSES, *base], os.path.join(scratch, "two.jsonl"))
            same = Path(scratch, "one.jsonl").read_bytes() == Path(scratch, "two.jsonl").read_bytes()
        ratio = two["wall_s"] / one["wall_s"]
        results.append({"rows": size, "one": one, "two": two, "ratio": round(ratio, 2), "same_bytes": same})
        print(
            f"| {size:,} | {one['wall_s']} ({one['prediction_s']}) | {two['wall_s']} ({two['prediction_s']}) "
            f"| {ratio:.2f} | {'yes' if same else 'NO'} |",
            flush=True,
        )
    print(json.dumps({"run": args.run, "cpus": os.cpu_count(), "results": results}))


if __name__ == "__main__":
    main()
