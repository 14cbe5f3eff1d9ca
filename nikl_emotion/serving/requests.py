"""What `POST /predict` accepts, checked before anything reaches the model: every refusal is a `RequestError` with
an HTTP status (4xx) and the field it names, never a 500.

A body is one row, a list of rows or `{"rows": [...]}`. A row is either the task's input format
(`{"id", "input": {"form", "target": {"form", "begin", "end"} | null}}`, `output` ignored) or the short form
`{"text", "target"}`, where `target` is null, the target's words (found in the text: the first occurrence) or
`{"begin", "end"}` (the span given; `form`, if given, must match). `id` is optional in both (default: the row's
1-based position).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from nikl_emotion.base.errors import RowError
from nikl_emotion.text.data import check_records

__all__ = [
    "Limits",
    "RequestError",
    "parse_body",
]


@dataclass(frozen=True)
class Limits:
    """Bounds on one request (the service's options)."""

    max_request_bytes: int = 1_000_000
    max_rows: int = 256
    max_text_chars: int = 2_000


class RequestError(Exception):
    """A request the service refuses: `status` (4xx), the JSON path of the field at fault and what is wrong."""

    def __init__(self, status: int, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.status, self.field, self.message = status, field, message

    def as_json(self) -> dict:
        return {"error": {"field": self.field, "message": self.message}}


def parse_body(body: bytes, limits: Limits) -> tuple[list[str], list[dict]]:
    """The request's rows as (their ids, task-format records keyed by position), validated as a file's rows are."""
    if len(body) > limits.max_request_bytes:
        raise RequestError(413, "body", f"larger than {limits.max_request_bytes} bytes")
    try:
        value = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(400, "body", f"not valid JSON ({getattr(exc, 'msg', 'not UTF-8')})") from None
    except RecursionError:
        raise RequestError(400, "body", "JSON nested too deeply") from None
    rows, prefix = _row_list(value)
    if not rows:
        raise RequestError(422, prefix or "body", "no rows")
    if len(rows) > limits.max_rows:
        raise RequestError(413, prefix or "body", f"{len(rows)} rows; at most {limits.max_rows} per request")
    records = [_task_record(row, index, f"{prefix}[{index}]", limits) for index, row in enumerate(rows)]
    # the request's own ids (or positions) answer; the records carry positions: a request's ids need not be unique
    ids = [row.get("id") or record["id"] for row, record in zip(rows, records)]
    try:
        check_records(records, "request")  # the file format's own checks (span, types, lone surrogates)
    except RowError as exc:
        raise RequestError(422, f"{prefix}[{exc.line - 1}].{exc.field}", exc.message) from None
    return ids, records


def _row_list(value) -> tuple[list, str]:
    if isinstance(value, list):
        return value, "rows"
    if isinstance(value, dict) and "rows" in value:
        if not isinstance(value["rows"], list):
            raise RequestError(422, "rows", "expected a list of rows")
        return value["rows"], "rows"
    if isinstance(value, dict):
        return [value], "rows"
    raise RequestError(422, "body", 'expected a row, a list of rows or {"rows": [...]}')


def _task_record(row, index: int, where: str, limits: Limits) -> dict:
    """One row as a task-format record, its id its 1-based position (the request's own id is checked here)."""
    if not isinstance(row, dict):
        raise RequestError(422, where, "expected an object")
    row_id = row.get("id")
    if row_id is not None and (not isinstance(row_id, str) or not row_id.strip()):
        raise RequestError(422, f"{where}.id", "not a non-empty string")
    if "input" in row:
        inp = row["input"]
        if not isinstance(inp, dict):
            raise RequestError(422, f"{where}.input", "expected an object with form and target")
        _check_length(inp.get("form"), f"{where}.input.form", limits)
        inp = {"form": inp.get("form"), "target": inp.get("target", None)}
    elif "text" in row:
        text = row["text"]
        if not isinstance(text, str):
            raise RequestError(422, f"{where}.text", "not a string")
        _check_length(text, f"{where}.text", limits)
        inp = {"form": text, "target": _short_target(text, row.get("target"), f"{where}.target")}
    else:
        raise RequestError(422, where, 'expected "text" (and "target") or the task\'s "input"')
    return {"id": str(index + 1), "input": inp}


def _check_length(text, field: str, limits: Limits) -> None:
    if isinstance(text, str) and len(text) > limits.max_text_chars:
        raise RequestError(422, field, f"{len(text)} characters; at most {limits.max_text_chars}")


def _short_target(text: str, target, field: str) -> dict | None:
    """The short form's target as the task's {form, begin, end}: words found in the text, or a span given."""
    if target is None or target == "":
        return None
    if isinstance(target, str):
        begin = text.find(target)
        if begin < 0:
            raise RequestError(422, field, f"{target!r} does not occur in the text")
        return {"form": target, "begin": begin, "end": begin + len(target)}
    if not isinstance(target, dict):
        raise RequestError(422, field, 'expected null, the target\'s words or {"begin", "end"}')
    begin, end = target.get("begin"), target.get("end")
    for key, value in (("begin", begin), ("end", end)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise RequestError(422, f"{field}.{key}", "not an integer")
    if not 0 <= begin <= end <= len(text):
        raise RequestError(422, field, f"span [{begin}, {end}) outside the text (length {len(text)})")
    form = target.get("form", text[begin:end])
    return {"form": form, "begin": begin, "end": end}
