"""Serve a model over HTTP: a JSON API with micro-batching, and a page to try it.

nikl-emotion serve FOLDER [--host 127.0.0.1] [--port 8000] [--max_batch_size 64] [--max_wait_ms 0]

FOLDER: a train.py run (its folds, voted by its rule), an ensemble.py stack folder, one checkpoint (a fold's best/)
or an export.py (ONNX) folder. Every checkpoint is loaded once, before the service starts.
  POST /predict  {"text": "...", "target": "words in the text" | {"begin": 3, "end": 5} | null}, a task row, a list
                 of rows or {"rows": [...]} -> {"rows": [{"id", "labels", "output", "probabilities"}], "decision"}
  GET  /health, GET /labels, GET / (the page)
Stop with Ctrl-C or SIGTERM: requests in flight are answered first.
"""

import math
import signal

from nikl_emotion.base.errors import PipelineError
from nikl_emotion.commands.cli import add_loading_arguments, command_parser, load_options, quiet_libraries

__all__ = [
    "main",
]


def main(argv: list[str]) -> int:
    parser = command_parser(__doc__)
    parser.add_argument("folder", help="a run, a stack, a best/ checkpoint or an export folder")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max_batch_size", type=int, default=64, help="rows answered by one forward pass")
    parser.add_argument(
        "--max_wait_ms",
        type=float,
        default=0.0,
        help="how long a request waits for others to share its batch (0: a batch takes whoever waits while the "
        "model is busy, and a lone request runs at once)",
    )
    parser.add_argument("--max_rows", type=int, default=256, help="rows per request")
    parser.add_argument("--max_text_chars", type=int, default=2000, help="characters per text")
    parser.add_argument("--max_request_bytes", type=int, default=1_000_000, help="bytes per request body")
    parser.add_argument(
        "--request_timeout_s",
        type=float,
        default=10.0,
        help="seconds a request body may take to arrive (then 408); a stop waits no longer than this for the "
        "requests in flight, whatever the clients do",
    )
    add_loading_arguments(parser)
    args = parser.parse_args(argv)
    options = _options(args)
    quiet_libraries()
    import uvicorn

    from nikl_emotion.runs.prediction import checkpoint_loader
    from nikl_emotion.serving.app import create_app
    from nikl_emotion.serving.served_model import ServedModel

    loader = checkpoint_loader(args.device, load_options(args))
    model = ServedModel(args.folder, loader, batch_size=args.max_batch_size)
    print(f"serving {args.folder} ({len(model.models)} checkpoint(s)) on http://{args.host}:{args.port}/", flush=True)
    # uvicorn stops gracefully on SIGTERM/Ctrl-C (requests in flight answered, then the app's shutdown), then raises
    # the signal again for the handler it found: a stop that was asked for is a normal end (exit 0), not an error
    for stop in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop, lambda signum, frame: None)
    # a stop answers the requests in flight, but never waits on a client longer than a body may take to arrive
    grace = math.ceil(options.request_timeout_s) + _ANSWER_SECONDS
    uvicorn.run(
        create_app(model, options),
        host=args.host,
        port=args.port,
        log_level="warning",
        timeout_graceful_shutdown=grace,
    )
    print("stopped", flush=True)
    return 0


def _options(args):
    from nikl_emotion.serving.app import ServeOptions
    from nikl_emotion.serving.requests import Limits

    for name in ("port", "max_batch_size", "max_rows", "max_text_chars", "max_request_bytes"):
        if getattr(args, name) < 1:
            raise PipelineError(f"--{name}: must be at least 1, got {getattr(args, name)}")
    if args.port > _HIGHEST_PORT:
        raise PipelineError(f"--port: must be at most {_HIGHEST_PORT}, got {args.port}")
    # a request waits this long for others to share its batch: unbounded (inf, 1e9) it would never be answered, and
    # nan compares false to everything (it acted as 0)
    if not 0 <= args.max_wait_ms <= _LONGEST_WAIT_MS:
        raise PipelineError(f"--max_wait_ms: must be between 0 and {_LONGEST_WAIT_MS:g}, got {args.max_wait_ms}")
    if not 0 < args.request_timeout_s <= _LONGEST_REQUEST_S:
        raise PipelineError(
            f"--request_timeout_s: must be above 0 and at most {_LONGEST_REQUEST_S:g}, got {args.request_timeout_s}"
        )
    limits = Limits(args.max_request_bytes, args.max_rows, args.max_text_chars)
    return ServeOptions(args.max_batch_size, args.max_wait_ms, limits, args.request_timeout_s)


_HIGHEST_PORT = 65535
_LONGEST_WAIT_MS = 1000.0  # a second: beyond it a micro-batch only delays answers
_LONGEST_REQUEST_S = 600.0
_ANSWER_SECONDS = 5  # beyond the body's timeout, for the forward pass of a request already read
