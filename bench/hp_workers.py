"""Trials per minute on one study with 1, 2 and 4 workers (issue 49).

python bench/hp_workers.py [--workers 1 2 4] [--trials 8] [--config configs/quickstart.yaml] [--key value ...]

For each worker count, a fresh output folder and journal-file study; the workers start together
(`OMP_NUM_THREADS=1` each: a 2-core machine runs two at full speed), each running `--trials / workers` trials
(so every row runs the same number of trials); the wall time is from the first start to the last exit, imports
and set-up included, as a user waits. Prints one Markdown row per worker count.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_workers(count: int, trials: int, config: str, extra: list[str], work: Path) -> tuple[float, int]:
    """(wall seconds, complete trials) of `count` workers sharing one study."""
    out, journal = work / f"w{count}", work / f"w{count}.journal"
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = [sys.executable, "train.py", config, "--output_dir", str(out), "--hp_storage", f"journal:{journal}"]
    started = time.monotonic()
    workers = [
        subprocess.Popen(
            [*command, "--hp-search", str(trials // count), *extra],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=environment,
        )
        for _ in range(count)
    ]
    for worker in workers:
        _, stderr = worker.communicate()
        if worker.returncode != 0:
            raise SystemExit(f"a worker failed:\n{stderr[-3000:]}")
    seconds = time.monotonic() - started
    # the last worker wrote the table (or, if two ended together, one of them did)
    report = [*command, "--hp_report", "true", *extra]
    subprocess.run(report, cwd=ROOT, check=True, capture_output=True, env=environment)
    with open(out / "hp_search.csv", encoding="utf-8") as table:
        complete = sum(row["state"] == "COMPLETE" for row in csv.DictReader(table))
    return seconds, complete


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--config", default="configs/quickstart.yaml")
    args, extra = parser.parse_known_args()
    print("| workers | trials | wall s | trials per minute | speed-up |")
    print("|---|---|---|---|---|")
    base = None
    with tempfile.TemporaryDirectory() as work:
        for count in args.workers:
            seconds, complete = run_workers(count, args.trials, args.config, extra, Path(work))
            rate = complete / seconds * 60
            base = base or rate
            print(f"| {count} | {complete} | {seconds:.1f} | {rate:.1f} | {rate / base:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
