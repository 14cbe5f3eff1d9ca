"""A predicting process's start (issue 47; not a timed test): wall seconds of `inference.py --run RUN` on a few rows
and of `nikl-emotion serve RUN` until `/health` answers, for each CHECKOUT (a clone of another commit compares code
side by side on one run), the checkouts alternating round after round.

    python bench/startup.py RUN CHECKOUT [CHECKOUT ...] [--rows FILE.jsonl] [--head 20] [--rounds 3]

Prints one line per measurement and a markdown table of the medians. Every process runs alone.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ROWS = ROOT.parent / "shared" / "data" / "nikluge-ea-2023" / "dev.jsonl"


def inference_seconds(checkout: str, run: str, rows: str, scratch: str) -> float:
    command = [sys.executable, "inference.py", "--run", run, "--input", rows]
    command += ["--output", os.path.join(scratch, "out.jsonl")]
    start = time.perf_counter()
    subprocess.run(command, cwd=checkout, check=True, capture_output=True)
    return time.perf_counter() - start


def serve_seconds(checkout: str, run: str) -> float:
    """From the command to the first answer of /health."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "nikl_emotion", "serve", run, "--port", str(port)]
    start = time.perf_counter()
    server = subprocess.Popen(command, cwd=checkout, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while server.poll() is None:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read()
                return time.perf_counter() - start
            except OSError:
                time.sleep(0.05)
        raise SystemExit(f"{checkout}: serve exited with {server.returncode}")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("checkouts", nargs="+")
    parser.add_argument("--rows", default=str(DEFAULT_ROWS))
    parser.add_argument("--head", type=int, default=20, help="how many of the file's rows inference.py predicts")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    run = os.path.abspath(args.run)
    times: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        rows = os.path.join(scratch, "rows.jsonl")
        with open(args.rows, encoding="utf-8") as source, open(rows, "w", encoding="utf-8") as head:
            head.writelines(line for _, line in zip(range(args.head), source))
        for round_ in range(args.rounds):
            for checkout in args.checkouts:
                for what, measure in (
                    ("inference.py", lambda c=checkout: inference_seconds(c, run, rows, scratch)),
                    ("serve", lambda c=checkout: serve_seconds(c, run)),
                ):
                    seconds = measure()
                    times.setdefault((checkout, what), []).append(seconds)
                    print(f"round {round_ + 1} {checkout} {what}: {seconds:.2f} s", flush=True)
    print(f"\n| checkout | `inference.py`, {args.head} rows: median s (all) | `serve` to /health: median s (all) |")
    print("|---|---|---|")
    for checkout in args.checkouts:
        cells = []
        for what in ("inference.py", "serve"):
            values = times[(checkout, what)]
            cells.append(f"{statistics.median(values):.2f} ({', '.join(f'{v:.1f}' for v in values)})")
        print(f"| {checkout} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
