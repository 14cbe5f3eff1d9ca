"""The HTTP service (`nikl-emotion serve FOLDER`): FastAPI on uvicorn.

    POST /predict   rows in (serving/requests.py), labels, probabilities and the decision rule out
    GET  /health    the model served and what it has answered
    GET  /labels    the eight labels in the task's order (and their Korean names)
    GET  /          a page to try the model (serving/page.html)

Requests are checked in full before they wait for a batch (a bad one gets a 4xx naming its field), then
micro-batched (`micro_batching.py`) with whoever else is waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from nikl_emotion.base.labels import KOREAN_NAMES, LABELS
from nikl_emotion.serving.micro_batching import MicroBatcher
from nikl_emotion.serving.requests import Limits, RequestError, parse_body

__all__ = [
    "ServeOptions",
    "create_app",
]


@dataclass(frozen=True)
class ServeOptions:
    max_batch_size: int = 64
    # 0: a batch takes whoever waits while the model is busy (a lone request never waits for company)
    max_wait_ms: float = 0.0
    limits: Limits = field(default_factory=Limits)
    request_timeout_s: float = 10.0  # a body that takes longer to arrive is refused (408)


def create_app(model, options: ServeOptions | None = None) -> FastAPI:
    """The service of `model` (a `ServedModel`, loaded once, before the app starts)."""
    options = options or ServeOptions()
    batcher = MicroBatcher(model.predict, options.max_batch_size, options.max_wait_ms)
    decision = model.rule.as_dict()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        yield
        await batcher.close()  # SIGTERM: uvicorn lets running requests finish, then this

    app = FastAPI(title="nikl-emotion", summary=f"emotions of {model.source}", lifespan=lifespan)
    page = resources.files("nikl_emotion.serving").joinpath("page.html").read_text(encoding="utf-8")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        """The router's own answers (an unknown path 404, a wrong method 405) in the one documented error shape."""
        error = {"error": {"field": None, "message": str(exc.detail)}}
        return JSONResponse(error, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def home() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/labels")
    async def labels() -> dict:
        return {"labels": list(LABELS), "korean": [KOREAN_NAMES[label] for label in LABELS]}

    @app.get("/health")
    async def health() -> dict:
        return {
            "status": "ok",
            "model": model.source,
            "checkpoints": len(model.models),
            "decision": model.rule.as_dict(),
            "served": {"batches": batcher.batches, "rows": batcher.rows},
        }

    @app.post("/predict")
    async def predict(request: Request):
        try:
            body = await _body(request, options.limits.max_request_bytes, options.request_timeout_s)
            ids, records = parse_body(body, options.limits)
        except RequestError as exc:
            return JSONResponse(exc.as_json(), status_code=exc.status)
        except ClientDisconnect:  # the client left mid-body: nobody to answer, nothing to log
            return Response(status_code=499)
        try:
            decisions, probs = await batcher.predict(records)
        except RuntimeError as exc:  # shutting down
            return JSONResponse({"error": {"field": None, "message": str(exc)}}, status_code=503)
        # a response object: FastAPI's encoding of a returned dict walks it again
        return JSONResponse({"rows": list(map(_answer, ids, decisions, probs)), "decision": decision})

    return app


def _answer(row_id: str, decisions, probs) -> dict:
    return {
        "id": row_id,
        "labels": [label for label, flag in zip(LABELS, decisions) if flag],
        "output": {label: "True" if flag else "False" for label, flag in zip(LABELS, decisions)},
        "probabilities": {label: round(float(p), 6) for label, p in zip(LABELS, probs)},
    }


async def _body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The request body, refused (413) as soon as it is known to be larger than `limit`: by its Content-Length,
    or while it streams in; and (408) when it has not all arrived within `timeout_s` (a client trickling its body
    would otherwise hold its request, and a stop of the service, open as long as it likes)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise RequestError(413, "body", f"larger than {limit} bytes")
    try:
        return await asyncio.wait_for(_streamed_body(request, limit), timeout_s)
    except TimeoutError:
        raise RequestError(408, "body", f"not received within {timeout_s:g} s") from None


async def _streamed_body(request: Request, limit: int) -> bytes:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise RequestError(413, "body", f"larger than {limit} bytes")
    return bytes(body)
