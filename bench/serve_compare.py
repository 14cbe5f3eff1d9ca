"""The default service of one checkout against its offline prediction (issue 47; not a timed test): one-row requests
at concurrency 1 (200 requests) and 32 (800), then the two baselines, all through `bench/serve_load.py`'s own
functions imported from CHECKOUT (a clone of another commit compares code side by side on one run).

    python bench/serve_compare.py CHECKOUT RUN --rows FILE.jsonl

Prints one line: the checkout, per concurrency (concurrency, rows/s, p50 ms, p99 ms, errors), the forward passes
alone of one row (p50 ms) and `inference.py --run`'s rows/s in one process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkout")
    parser.add_argument("run")
    parser.add_argument("--rows", required=True)
    args = parser.parse_args()
    sys.path[:0] = [f"{args.checkout}/bench", args.checkout]
    import serve_load

    with open(args.rows, encoding="utf-8") as handle:
        bodies = [{"id": row["id"], "input": row["input"]} for row in map(json.loads, filter(str.strip, handle))]
    server, url = serve_load.start_server(args.run)
    try:
        loads = [asyncio.run(serve_load.load(url, bodies, n, c)) for c, n in ((1, 200), (32, 800))]
    finally:
        serve_load.stop_server(server)
    baselines = serve_load.baselines(args.run, args.rows, bodies, 100)
    cells = [(r["concurrency"], r["rows_per_s"], r["p50_ms"], r["p99_ms"], r["errors"]) for r in loads]
    print(args.checkout, cells, baselines["one_row"]["forward_p50_ms"], baselines["inference_rows_per_s"], flush=True)


if __name__ == "__main__":
    main()
