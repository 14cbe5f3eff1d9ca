"""Load test of `nikl-emotion serve` on loopback (issues 37, 47; not a timed test): one-row requests at several
concurrencies against the service as it starts by default (a batch takes whoever is waiting, no wait), with a
5 ms wait for company, and with one forward pass per request (`--max_batch_size 1`); then hostile requests, each
of which must get a 4xx while the service stays healthy; then, with no server running, the two baselines: the
forward passes alone of one row (every checkpoint, in this process) and `inference.py --run` on the rows in one
process (its own rows/s, process start excluded).

    python bench/serve_load.py FOLDER [--rows FILE.jsonl] [--requests 400] [--concurrency 1 8 32]

FOLDER: a run, a stack, a best/ or an export. The texts are the rows of --rows (default: the sample test file),
cycled. Prints a markdown table and one JSON line; the client runs on the same machine as the server (its share of
the cores is part of the figures).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(folder: str, *options: str) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    command = [sys.executable, "-m", "nikl_emotion", "serve", folder, "--port", str(port), *options]
    server = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server stopped: {server.stderr.read().decode()[-2000:]}")
        try:
            httpx.get(f"{url}/health", timeout=2).raise_for_status()
            return server, url
        except httpx.HTTPError:
            time.sleep(0.3)
    raise SystemExit("the server did not start in 300 s")


def stop_server(server: subprocess.Popen) -> int:
    server.send_signal(signal.SIGTERM)
    return server.wait(timeout=60)


async def load(url: str, bodies: list[dict], requests: int, concurrency: int) -> dict:
    """`requests` one-row requests, `concurrency` in flight at a time; latency per request, throughput overall.
    The client is aiohttp: httpx's async pool cost ~3 ms of CPU a request on the cores the server shares, which
    capped a model-less service at ~330 requests/s (aiohttp: ~1,500)."""
    latencies, errors, next_index = [], 0, iter(range(requests))

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        for index in next_index:
            start = time.perf_counter()
            async with session.post(f"{url}/predict", json=bodies[index % len(bodies)]) as response:
                await response.read()
            latencies.append(time.perf_counter() - start)
            errors += response.status != 200

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        async with session.post(f"{url}/predict", json=bodies[0]) as response:  # warm-up
            await response.read()
        start = time.perf_counter()
        await asyncio.gather(*[worker(session) for _ in range(concurrency)])
        seconds = time.perf_counter() - start
    latencies.sort()
    return {
        "concurrency": concurrency,
        "requests": requests,
        "rows_per_s": round(requests / seconds, 1),
        "p50_ms": round(1000 * statistics.median(latencies), 1),
        "p99_ms": round(1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 1),
        "errors": errors,
    }


HOSTILE = {
    "malformed JSON": b'{"text": "\xea\xb3\xb5\xec\x97\xb0", ',
    "wrong types": json.dumps({"text": ["공연"], "target": 3}).encode(),
    "10 MB body": json.dumps({"text": "가" * 3_500_000}).encode(),
    "100k-character text": json.dumps({"text": "공연이 좋았다 " * 12_500}).encode(),
    "target span outside the text": json.dumps({"text": "공연", "target": {"begin": 1, "end": 40}}).encode(),
    "target not in the text": json.dumps({"text": "공연", "target": "영화"}).encode(),
    "too many rows": json.dumps({"rows": [{"text": "공연"}] * 10_000}).encode(),
    "lone surrogate": b'{"text": "\\udc00"}',
    "not a row": b'"just a string"',
}


def hostile(url: str) -> dict:
    """Each hostile body's status (every one must be 4xx), then whether /health still answers."""
    statuses = {}
    for name, body in HOSTILE.items():
        try:
            statuses[name] = httpx.post(f"{url}/predict", content=body, timeout=60).status_code
        except httpx.HTTPError as exc:  # the server may close a huge upload early: not an answer, so a failure
            statuses[name] = f"no answer ({type(exc).__name__})"
    healthy = httpx.get(f"{url}/health", timeout=10).status_code == 200
    return {
        "statuses": statuses,
        "all_4xx": all(isinstance(s, int) and 400 <= s < 500 for s in statuses.values()),
        "healthy_after": healthy,
    }


def baselines(folder: str, rows_path: str, bodies: list[dict], requests: int) -> dict:
    """The forward passes alone of one row (p50 over `requests` rows, in this process) and `inference.py --run`'s
    rows/s on the rows file (from its log line, process start excluded; `--checkpoint` for a best/)."""
    sys.path.insert(0, str(ROOT / "bench"))
    from predict_overhead import measure

    from nikl_emotion.runs.prediction import checkpoint_loader
    from nikl_emotion.serving.served_model import ServedModel

    served = ServedModel(folder, checkpoint_loader("cpu"))
    served.predict(bodies[:8])
    one_row = measure(served, [[bodies[i % len(bodies)]] for i in range(requests)])
    del served
    from nikl_emotion.folders.folder_kind import folder_kind

    which = "--checkpoint" if folder_kind(folder) == "checkpoint" else "--run"  # a best/ is no run
    with tempfile.TemporaryDirectory() as scratch:
        command = [sys.executable, "inference.py", which, folder, "--input", rows_path]
        command += ["--output", os.path.join(scratch, "out.jsonl")]
        log = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True).stderr
    rate = re.search(r"predicted (\d+) rows .* \((\d+) rows/s", log)
    return {"one_row": one_row, "inference_rows_per_s": int(rate.group(2)) if rate else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder")
    parser.add_argument("--rows", default=str(ROOT / "data" / "sample_test.jsonl"))
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    args = parser.parse_args()
    with open(args.rows, encoding="utf-8") as handle:
        bodies = [{"id": row["id"], "input": row["input"]} for row in map(json.loads, filter(str.strip, handle))]
    results = {}
    for name, options in (
        ("default (64 rows, whoever waits)", ()),
        ("5 ms wait for company", ("--max_wait_ms", "5")),
        ("one pass per request", ("--max_batch_size", "1", "--max_wait_ms", "0")),
    ):
        server, url = start_server(args.folder, *options)
        try:
            results[name] = [asyncio.run(load(url, bodies, args.requests, c)) for c in args.concurrency]
            if not options:
                results["hostile"] = hostile(url)
        finally:
            results.setdefault("exit_codes", {})[name] = stop_server(server)
    print("| service | concurrency | rows/s | p50 ms | p99 ms | errors |\n|---|---|---|---|---|---|")
    for name, rows in results.items():
        if isinstance(rows, list):
            for r in rows:
                cells = [name, *(r[k] for k in ("concurrency", "rows_per_s", "p50_ms", "p99_ms", "errors"))]
                print("| " + " | ".join(map(str, cells)) + " |")
    results["baselines"] = baselines(args.folder, args.rows, bodies, min(args.requests, 200))
    forward, rate = results["baselines"]["one_row"]["forward_p50_ms"], results["baselines"]["inference_rows_per_s"]
    print(f"\nforward passes alone, one row: p50 {forward} ms; inference.py --run, one process: {rate} rows/s")
    print(json.dumps({"folder": args.folder, "cpus": os.cpu_count(), **results}, ensure_ascii=False))


if __name__ == "__main__":
    main()
