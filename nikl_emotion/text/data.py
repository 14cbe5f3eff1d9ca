"""Loading and validating NIKL-format jsonl with `datasets`.

Each file is read with the `text` builder (one row per line, cached on disk by `datasets`), then parsed and
validated in a batched `map`. Parsing into one flat schema is what lets train rows (`output` an object) and test
rows (`output: ""`) load side by side without Arrow type errors.
"""

from __future__ import annotations

import hashlib
import json
import os
from array import array
from collections.abc import Iterator, Mapping
from collections.abc import Sequence as SequenceOf
from typing import Literal, NamedTuple

import datasets
import numpy as np
import pyarrow as pa
from datasets import Dataset, Features, Sequence, Value
from datasets.exceptions import DatasetGenerationError

from nikl_emotion.base.errors import RowError
from nikl_emotion.base.fileio import check_text, file_digest, iter_json_lines, iter_text_lines, parse_json_line
from nikl_emotion.base.labels import LABELS, NUM_LABELS

__all__ = [
    "load_jsonl",
    "scan_jsonl",
    "JsonlScan",
    "read_jsonl_chunks",
    "check_records",
    "records_table",
    "iter_column",
    "iter_inputs",
    "load_jsonl_files",
    "RowTable",
    "arrow_column",
    "Rows",
    "as_rows",
]


_LabelMode = Literal["required", "optional"]

_TRUE_VALUES = {"True", "true", "TRUE", "1", True}
_FALSE_VALUES = {"False", "false", "FALSE", "0", False}

_ROW_FEATURES = Features(
    {
        "id": Value("string"),
        "line": Value("int64"),
        "text": Value("string"),
        "target": Value("string"),
        "target_begin": Value("int64"),
        "target_end": Value("int64"),
        "labels": Sequence(Value("float32"), length=NUM_LABELS),
        "input_json": Value("string"),
    }
)
_ROW_SCHEMA = _ROW_FEATURES.arrow_schema  # built once: datasets recomputes it on every access

# rows on disk (a dataset: cached maps, fingerprints) or in memory (an Arrow table: a request, a few dicts, a chunk)
RowTable = Dataset | pa.Table


def arrow_column(rows: RowTable, name: str) -> pa.ChunkedArray | pa.Array:
    """One column as Arrow, in the rows' (possibly selected/reordered) order, without Python lists."""
    return rows[name] if isinstance(rows, pa.Table) else rows.with_format("arrow")[name]


def _boolean(value, path: str, line: int, label: str) -> float:
    # `hash` would make 1.0 equal 1 and True; keep numbers other than 0/1 and bools out explicitly
    if isinstance(value, float) or not isinstance(value, (str, int, bool)):
        raise RowError(
            path, line, f"output.{label}", f'expected "True" or "False", got {json.dumps(value, ensure_ascii=False)}'
        )
    if value in _TRUE_VALUES:
        return 1.0
    if value in _FALSE_VALUES:
        return 0.0
    raise RowError(
        path, line, f"output.{label}", f'expected "True" or "False", got {json.dumps(value, ensure_ascii=False)}'
    )


def _parse_row(obj: object, path: str, line: int, label_mode: _LabelMode) -> dict:
    """Validate one NIKL row and flatten it; raise `RowError` naming the field on anything wrong."""
    if not isinstance(obj, dict):
        raise RowError(path, line, "row", "expected a JSON object")
    row_id = obj.get("id")
    if not isinstance(row_id, str) or not row_id.strip():
        raise RowError(path, line, "id", "missing or not a non-empty string")
    inp = obj.get("input")
    if not isinstance(inp, dict):
        raise RowError(path, line, "input", "missing or not an object")
    text = inp.get("form")
    if not isinstance(text, str) or not text.strip():
        raise RowError(path, line, "input.form", "missing or not a non-empty string")
    if "target" not in inp:
        raise RowError(
            path, line, "input.target", 'missing (use {"form": null, "begin": null, "end": null} for no target)'
        )
    target, begin, end = _parse_target(inp["target"], text, path, line)
    labels = _parse_output(obj, path, line, label_mode)
    return {
        "id": row_id,
        "line": line,
        "text": text,
        "target": target,
        "target_begin": begin,
        "target_end": end,
        "labels": labels,
        "input_json": json.dumps(inp, ensure_ascii=False),
    }


def _parse_target(target: object, text: str, path: str, line: int) -> tuple[str | None, int | None, int | None]:
    if target is None:
        return None, None, None
    if not isinstance(target, dict):
        raise RowError(path, line, "input.target", "expected an object with form, begin and end")
    for key in ("form", "begin", "end"):
        if key not in target:
            raise RowError(path, line, f"input.target.{key}", "missing")
    form, begin, end = target["form"], target["begin"], target["end"]
    if form is None and begin is None and end is None:
        return None, None, None
    if form is None or begin is None or end is None:
        raise RowError(path, line, "input.target", "form, begin and end must be all null or all set")
    if not isinstance(form, str):
        raise RowError(path, line, "input.target.form", "not a string")
    for key, value in (("begin", begin), ("end", end)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise RowError(
                path, line, f"input.target.{key}", f"not an integer: {json.dumps(value, ensure_ascii=False)}"
            )
    if begin > end:
        raise RowError(path, line, "input.target", f"begin {begin} is after end {end}")
    if not 0 <= begin <= end <= len(text):
        raise RowError(path, line, "input.target", f"span [{begin}, {end}) outside the text (length {len(text)})")
    if text[begin:end] != form:
        raise RowError(
            path,
            line,
            "input.target",
            f"form {form!r} does not match the text at [{begin}, {end}): {text[begin:end]!r}",
        )
    return form, begin, end


def _parse_output(obj: dict, path: str, line: int, label_mode: _LabelMode) -> list[float] | None:
    if "output" not in obj:
        if label_mode == "required":
            raise RowError(path, line, "output", "missing")
        return None
    output = obj["output"]
    if output == "" or output is None:
        if label_mode == "required":
            raise RowError(path, line, "output", 'no labels ("output" is empty) in a training file')
        return None
    if not isinstance(output, dict):
        raise RowError(path, line, "output", 'expected an object with the 8 emotion labels or ""')
    missing = [label for label in LABELS if label not in output]
    extra = [key for key in output if key not in LABELS]
    if missing or extra:
        parts = []
        if missing:
            parts.append("missing " + ", ".join(missing))
        if extra:
            parts.append("unknown " + ", ".join(map(str, extra)))
        raise RowError(path, line, "output", "; ".join(parts) + f" (expected: {', '.join(LABELS)})")
    return [_boolean(output[label], path, line, label) for label in LABELS]


def _parse_batch(batch: dict, indices: list[int], path: str, label_mode: _LabelMode) -> dict:
    columns: dict[str, list] = {name: [] for name in _ROW_FEATURES}
    for raw, index in zip(batch["text"], indices):
        line = index + 1
        raw = raw.removeprefix("\ufeff") if index == 0 else raw
        if not raw.strip():
            continue  # blank lines are harmless (editors add them at the end)
        row = _checked_row(parse_json_line(raw, path, line), path, line, label_mode)
        for name, value in row.items():
            columns[name].append(value)
    return columns


_RAW_FEATURES = Features({"text": Value("string")})


def _file_lines(path: str, digest: str) -> Iterator[dict]:
    """`Dataset.from_generator` source: one row per line, split on "\\n" only (a bare CR inside a line is part of
    it, as for every other reader of the file), decoded line by line so bytes that are not UTF-8 name their line.
    `digest` is unused here: it keys the cache on the file's content."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                yield {"text": raw.decode("utf-8")}
            except UnicodeDecodeError:
                raise RowError(path, number, "encoding", "not valid UTF-8") from None


def load_jsonl(path: str | os.PathLike, label_mode: _LabelMode = "required") -> Dataset:
    """Load and validate one NIKL jsonl file.

    `label_mode="required"` (training files) refuses rows without labels; `"optional"` (test files, gold files
    for scoring) keeps `labels` as null where `output` is `""`.
    """
    path = os.fspath(path)
    _check_is_file(path)
    try:
        # keyed on the file's bytes: datasets' own text loader keys its cache on path and modification time, so a
        # file rewritten with its old mtime (cp -p, rsync -a, tar) would be read from the cache
        raw = Dataset.from_generator(
            _file_lines, features=_RAW_FEATURES, gen_kwargs={"path": path, "digest": file_digest(path)}
        )
    except DatasetGenerationError as exc:
        if isinstance(exc.__cause__, RowError):
            raise exc.__cause__ from None
        raise
    rows = raw.map(
        _parse_batch,
        batched=True,
        with_indices=True,
        remove_columns=raw.column_names,
        features=_ROW_FEATURES,
        fn_kwargs={"path": path, "label_mode": label_mode},
        desc=f"validating {os.path.basename(path)}",
    )
    if len(rows) == 0:
        raise RowError(path, None, "file", "no rows")
    _check_unique_ids([rows], [path])
    return rows


def _check_is_file(path: str) -> None:
    if os.path.isdir(path):
        raise RowError(path, None, "file", "is a folder, not a jsonl file")
    if not os.path.isfile(path):
        raise RowError(path, None, "file", "not found")


def _parsed_rows(path: str, label_mode: _LabelMode) -> Iterator[dict]:
    """Each non-blank line of `path` validated and flattened (as `load_jsonl` does), streamed."""
    for line, obj in iter_json_lines(path):
        yield _checked_row(obj, path, line, label_mode)


def _checked_row(obj: object, path: str, line: int, label_mode: _LabelMode) -> dict:
    row = _parse_row(obj, path, line, label_mode)
    for field, value in (("id", row["id"]), ("input", row["input_json"])):
        check_text(value, path, line, field)
    return row


def _id_hash(row_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(row_id.encode("utf-8"), digest_size=8).digest(), "little")


def _rows_table(rows: list[dict]) -> pa.Table:
    """Checked rows (`_checked_row`) in memory, with the columns `load_jsonl` gives."""
    return pa.Table.from_pydict({name: [row[name] for row in rows] for name in _ROW_FEATURES}, schema=_ROW_SCHEMA)


class JsonlScan(NamedTuple):
    rows: int
    labelled: int  # rows whose `output` holds labels


def scan_jsonl(path: str | os.PathLike, label_mode: _LabelMode = "optional") -> JsonlScan:
    """Validate a file of any size as `load_jsonl` does (every row, unique ids) in one streamed pass, holding 8 bytes
    per row (a hash of each id); returns its row counts. What `read_jsonl_chunks` reads afterwards is valid."""
    path = os.fspath(path)
    _check_is_file(path)
    hashes, labelled = array("Q"), 0
    for row in _parsed_rows(path, label_mode):
        labelled += row["labels"] is not None
        hashes.append(_id_hash(row["id"]))
    if not hashes:
        raise RowError(path, None, "file", "no rows")
    ordered = np.sort(np.frombuffer(hashes, dtype=np.uint64))
    if np.any(ordered[1:] == ordered[:-1]):  # a repeated hash: walk the file again to name the duplicate, if any
        repeated = set(ordered[1:][ordered[1:] == ordered[:-1]].tolist())
        seen: dict[str, int] = {}
        for row in _parsed_rows(path, label_mode):
            if _id_hash(row["id"]) in repeated and seen.setdefault(row["id"], row["line"]) != row["line"]:
                first = seen[row["id"]]
                raise RowError(path, row["line"], "id", f"duplicate id {row['id']!r} (first at {path}:{first})")
    return JsonlScan(len(hashes), labelled)


def read_jsonl_chunks(
    path: str | os.PathLike, chunk_size: int, owns=lambda chunk: True, label_mode: _LabelMode = "optional"
) -> Iterator[tuple[int, pa.Table]]:
    """The file's rows in consecutive chunks of `chunk_size` (the last may be shorter), as (chunk number, rows in
    memory) for the chunks `owns(number)` accepts; the others are skipped unparsed. Memory holds one chunk, not the
    file."""
    path = os.fspath(path)
    _check_is_file(path)
    rows, number, count = [], 0, 0
    for line_no, text in iter_text_lines(path):
        if owns(number):
            rows.append(_checked_row(parse_json_line(text, path, line_no), path, line_no, label_mode))
        count += 1
        if count == chunk_size:
            if owns(number):
                yield number, _rows_table(rows)
            rows, number, count = [], number + 1, 0
    if count and owns(number):
        yield number, _rows_table(rows)


def check_records(records: list, source: str = "<rows>") -> list[dict]:
    """Rows given in memory, validated like a file's lines (errors name `source` and the 1-based position) and
    flattened, without building a dataset: task rows as dicts (`{"id", "input": {"form", "target"}}`, `output`
    optional) or plain texts, which get ids "1", "2", ... and no target."""
    rows = []
    for position, record in enumerate(records, start=1):
        if isinstance(record, str):
            record = {"id": str(position), "input": {"form": record, "target": None}}
        rows.append(_checked_row(record, source, position, "optional"))
    if not rows:
        raise RowError(source, None, "rows", "no rows")
    return rows


def records_table(records: list, source: str = "<rows>") -> pa.Table:
    """`check_records`'s rows as an Arrow table with `load_jsonl`'s columns: rows in memory (a request, a few dicts)
    take the small-batch path, with no dataset to build, fingerprint or cache. Ids must be unique."""
    table = _rows_table(check_records(records, source))
    _check_unique_ids([table], [source])
    return table


def iter_column(rows: RowTable, name: str, chunk_size: int = 4096) -> Iterator:
    """One column's values in row order, read in chunks: large files never become one Python list."""
    if isinstance(rows, pa.Table):
        for start in range(0, len(rows), chunk_size):
            yield from rows.column(name).slice(start, chunk_size).to_pylist()
        return
    for batch in rows.select_columns([name]).iter(batch_size=chunk_size):
        yield from batch[name]


def iter_inputs(rows: RowTable) -> Iterator[dict]:
    """Each row's original `input` object (what a submission copies), streamed."""
    return (json.loads(text) for text in iter_column(rows, "input_json"))


def _check_unique_ids(parts: list[RowTable], paths: list[str]) -> None:
    """Ids must be unique across all files of one run: they key predictions, votes and scores."""
    columns = [arrow_column(part, "id") for part in parts]
    total = sum(len(column) for column in columns)
    if len(pa.chunked_array([c for column in columns for c in column.chunks], pa.string()).unique()) == total:
        return  # the common case, counted in Arrow; only a file with a duplicate is walked in Python to name it
    seen: dict[str, tuple[str, int]] = {}
    for rows, path in zip(parts, paths):
        rows = rows.to_pydict() if isinstance(rows, pa.Table) else rows
        for row_id, line in zip(rows["id"], rows["line"]):
            first = seen.setdefault(row_id, (path, line))
            if first != (path, line):
                raise RowError(path, line, "id", f"duplicate id {row_id!r} (first at {first[0]}:{first[1]})")


def load_jsonl_files(paths: list[str], label_mode: _LabelMode = "required") -> Dataset:
    """Load several files as one dataset (e.g. train + dev); ids must be unique across them."""
    if not paths:
        raise ValueError("no input files given")
    parts = [load_jsonl(path, label_mode) for path in paths]
    _check_unique_ids(parts, list(paths))
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


# what `EmotionClassifier.predict_proba` and friends accept as rows
Rows = str | os.PathLike | Dataset | pa.Table | Mapping | SequenceOf[str] | SequenceOf[dict]


def as_rows(rows: Rows) -> RowTable:
    """The accepted row inputs, validated, with `load_jsonl`'s columns (labels, where present, are ignored): a file
    as the cached dataset `load_jsonl` makes, rows in memory (dicts, texts) as an Arrow table (`records_table`)."""
    if isinstance(rows, (Dataset, pa.Table)):
        return rows
    if isinstance(rows, (str, os.PathLike)):
        return load_jsonl(rows, "optional")
    if isinstance(rows, Mapping):  # one task row: iterating it would yield its keys as texts
        rows = [rows]
    return records_table(list(rows))
