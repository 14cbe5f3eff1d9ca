"""Atomic file writing and the project's jsonl file formats (submissions and probability files)."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from typing import IO

import numpy as np

from nikl_emotion.errors import RowError
from nikl_emotion.labels import LABELS, NUM_LABELS


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """Write to a temp file in the target folder, fsync, then rename: the file appears whole or not at all."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_writer(path) as handle:
        handle.write(text)


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    write_text_atomic(path, json.dumps(obj, ensure_ascii=False, indent=2) + "\n")


def write_jsonl_atomic(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    with atomic_writer(path) as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def output_dict(decisions: Sequence[bool]) -> dict[str, str]:
    """The official `output` object: the 8 labels in fixed order as the strings "True"/"False"."""
    return {label: "True" if bool(flag) else "False" for label, flag in zip(LABELS, decisions, strict=True)}


def write_submission(path: str | os.PathLike, ids: Iterable[str], inputs: Iterable[dict], decisions: np.ndarray) -> None:
    """Write the official submission format: same `id` and `input` as the input file, `output` filled in.

    `ids` and `inputs` may be streams (e.g. read from a dataset in chunks); a length mismatch raises before the file
    appears."""
    write_jsonl_atomic(
        path,
        ({"id": i, "input": inp, "output": output_dict(row)} for i, inp, row in zip(ids, inputs, decisions, strict=True)),
    )


def write_probs(path: str | os.PathLike, ids: Iterable[str], probs: np.ndarray) -> None:
    """Probability file: one `{"id": ..., "probs": {label: p, ...}}` per row, labels in fixed order."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != NUM_LABELS:
        raise ValueError(f"probs must have shape (rows, {NUM_LABELS}), got {probs.shape}")
    write_jsonl_atomic(
        path,
        ({"id": i, "probs": {label: round(float(p), 7) for label, p in zip(LABELS, row)}} for i, row in zip(ids, probs, strict=True)),
    )


def iter_json_lines(path: str | os.PathLike) -> Iterator[tuple[int, object]]:
    """Yield (line number, parsed object) for each non-blank line; bad JSON or bytes that are not UTF-8 name
    their line. A UTF-8 BOM and CRLF line ends are accepted."""
    path = os.fspath(path)
    try:
        handle = open(path, "rb")  # bytes, decoded line by line, so a decoding error knows its line
    except OSError as exc:
        raise RowError(path, None, "file", f"cannot open: {exc.strerror}") from None
    with handle:
        for line_no, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise RowError(path, line_no, "encoding", "not valid UTF-8") from None
            if line_no == 1:
                line = line.removeprefix("\ufeff")
            if not line.strip():
                continue
            try:
                yield line_no, json.loads(line)
            except json.JSONDecodeError as exc:
                raise RowError(path, line_no, "json", f"invalid JSON ({exc.msg} at column {exc.colno})") from None


def read_probs(path: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """Read a probability file written by `write_probs`."""
    path = os.fspath(path)
    ids: list[str] = []
    rows: list[list[float]] = []
    first_line: dict[str, int] = {}
    for line_no, obj in iter_json_lines(path):
        if not isinstance(obj, dict) or not isinstance(obj.get("id"), str):
            raise RowError(path, line_no, "id", "missing or not a string")
        probs = obj.get("probs")
        if not isinstance(probs, dict) or list(probs) != list(LABELS):
            raise RowError(path, line_no, "probs", f"must be an object with the keys {', '.join(LABELS)} in order")
        values = list(probs.values())
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 <= v <= 1.0 for v in values):
            raise RowError(path, line_no, "probs", "values must be numbers in [0, 1]")
        if obj["id"] in first_line:
            raise RowError(path, line_no, "id", f"duplicate id {obj['id']!r} (first at line {first_line[obj['id']]})")
        first_line[obj["id"]] = line_no
        ids.append(obj["id"])
        rows.append(values)
    if not ids:
        raise RowError(path, None, "file", "no rows")
    return ids, np.asarray(rows, dtype=np.float64)
