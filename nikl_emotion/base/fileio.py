"""Atomic file writing and the project's jsonl file formats (submissions and probability files)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from typing import IO

import numpy as np

from nikl_emotion.base.errors import PipelineError, RowError
from nikl_emotion.base.labels import LABELS, NUM_LABELS

__all__ = [
    "write_csv_atomic",
    "check_output_path",
    "check_writable_location",
    "check_distinct_paths",
    "atomic_writer",
    "atomic_folder",
    "write_text_atomic",
    "write_json_atomic",
    "write_submission",
    "write_probs",
    "submission_line",
    "probs_line",
    "parse_json_line",
    "check_text",
    "iter_text_lines",
    "iter_json_lines",
    "read_probs",
    "file_digest",
    "remove_stale_temporaries",
    "write_arrow",
    "read_arrow",
]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (another user's) or cannot tell: leave its files alone
    return True


def remove_stale_temporaries(folder: str, name: str) -> None:
    """Delete `.NAME.PID.*` temporaries (files or folders) that a killed writer left in `folder`: their PID is
    no longer running. A live writer's temporaries are left alone."""
    prefix = f".{name}."
    with contextlib.suppress(OSError):
        for entry in os.listdir(folder):
            if not entry.startswith(prefix):
                continue
            pid = entry[len(prefix) :].split(".", 1)[0]
            if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
                path = os.path.join(folder, entry)
                shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.unlink(path)


def _default_mode(path: str, created: int = 0o666) -> int:
    """What a plain `open(path, "w")` (`created` 0o777: `os.makedirs(path)`) would give: the existing file's or
    folder's mode, else `created` minus the umask."""
    with contextlib.suppress(OSError):
        return stat.S_IMODE(os.stat(path).st_mode)
    umask = os.umask(0)
    os.umask(umask)
    return created & ~umask


def check_output_path(path: str | os.PathLike, what: str = "output") -> str:
    """An output file's path must be writable as a file: not a folder, not under a file, in a writable folder.
    Checked before any work, so a bad path fails at once instead of after the prediction."""
    path = os.fspath(path)
    if not path:
        raise PipelineError(f"{what}: empty path")
    if os.path.isdir(path):
        raise PipelineError(f"{path}: {what} is a folder; give a file path")
    check_writable_location(path, what)
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise PipelineError(f"{path}: {what}: not writable")
    return path


def check_writable_location(path: str, what: str) -> None:
    """The folder `path` would be created in (its nearest existing ancestor) is a writable folder, not a file."""
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise PipelineError(f"{path}: {what}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PipelineError(f"{path}: {what}: {parent} is not writable")


def check_distinct_paths(inputs: dict[str, str | None], outputs: dict[str, str | None]) -> None:
    """No output may be one of the inputs (or another output): `--output dev.jsonl --input dev.jsonl` would replace
    the gold labels. Keys name the options in the message; None values are skipped."""
    seen: dict[str, str] = {}
    for option, path in [*inputs.items(), *outputs.items()]:
        if path is None:
            continue
        for existing_option, existing in seen.items():
            if _same_file(path, existing) and (option in outputs or existing_option in outputs):
                raise PipelineError(
                    f"{path}: {option} is the same file as {existing_option}; write the output elsewhere"
                )
        seen[option] = path


def _same_file(a: str, b: str) -> bool:
    if os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)
    return os.path.realpath(a) == os.path.realpath(b)


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """Write to a temp file in the target folder, fsync, then rename: the file appears whole or not at all, with
    the mode a plain write would give. Temporaries of killed writers of the same file are removed first."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    name = os.path.basename(path)
    remove_stale_temporaries(folder, name)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.{os.getpid()}.", suffix=".tmp", dir=folder)
    try:
        os.fchmod(fd, _default_mode(path))
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


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[str]:
    """Build a folder under a temporary name beside `path`, then swap it in: `path` appears complete or not at
    all; a folder already there is replaced only after the new one is whole. The caller checks that replacing
    `path` is allowed."""
    path = os.fspath(path).rstrip(os.sep) or os.sep
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    name = os.path.basename(os.path.abspath(path))
    remove_stale_temporaries(parent, name)
    staging = tempfile.mkdtemp(prefix=f".{name}.{os.getpid()}.", suffix=".partial", dir=parent)
    try:
        os.chmod(staging, _default_mode(path, 0o777))  # mkdtemp's 0700 would make the folder private
        yield staging
        if os.path.isdir(path):
            old = tempfile.mkdtemp(prefix=f".{name}.{os.getpid()}.", suffix=".old", dir=parent)
            os.replace(path, os.path.join(old, "previous"))
            os.replace(staging, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_writer(path) as handle:
        handle.write(text)


def write_csv_atomic(path: str | os.PathLike, rows: list[dict]) -> None:
    """`rows` as CSV, one column per key any row has (in the order they first appear); a missing value is empty."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(dict.fromkeys(key for row in rows for key in row)))
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    write_text_atomic(path, json.dumps(obj, ensure_ascii=False, indent=2) + "\n")


def _write_jsonl_atomic(path: str | os.PathLike, lines: Iterable[str]) -> None:
    with atomic_writer(path) as handle:
        handle.writelines(lines)


def _output_dict(decisions: Sequence[bool]) -> dict[str, str]:
    """The official `output` object: the 8 labels in fixed order as the strings "True"/"False"."""
    return {label: "True" if bool(flag) else "False" for label, flag in zip(LABELS, decisions, strict=True)}


def submission_line(row_id: str, inp: dict, decisions: Sequence[bool]) -> str:
    """One row of the official submission format: the input's `id` and `input`, `output` filled in."""
    return json.dumps({"id": row_id, "input": inp, "output": _output_dict(decisions)}, ensure_ascii=False) + "\n"


def probs_line(row_id: str, probs: Sequence[float]) -> str:
    """One row of a probability file. Values keep 9 significant digits (more than a float32 model computes): a
    stacker reads small probabilities as logits, so a fixed number of decimals would change what it computes from
    these files against what the models give."""
    values = {label: float(f"{float(p):.9g}") for label, p in zip(LABELS, probs, strict=True)}
    return json.dumps({"id": row_id, "probs": values}, ensure_ascii=False) + "\n"


def write_submission(
    path: str | os.PathLike, ids: Iterable[str], inputs: Iterable[dict], decisions: np.ndarray
) -> None:
    """Write the official submission format: same `id` and `input` as the input file, `output` filled in.

    `ids` and `inputs` may be streams (e.g. read from a dataset in chunks); a length mismatch raises before the file
    appears."""
    _write_jsonl_atomic(
        path, (submission_line(i, inp, row) for i, inp, row in zip(ids, inputs, decisions, strict=True))
    )


def write_probs(path: str | os.PathLike, ids: Iterable[str], probs: np.ndarray) -> None:
    """Probability file: one `{"id": ..., "probs": {label: p, ...}}` per row (`probs_line`), labels in fixed order."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != NUM_LABELS:
        raise ValueError(f"probs must have shape (rows, {NUM_LABELS}), got {probs.shape}")
    _write_jsonl_atomic(path, (probs_line(i, row) for i, row in zip(ids, probs, strict=True)))


def parse_json_line(raw: str, path: str, line: int) -> object:
    """One line's JSON value; invalid or absurdly nested JSON is a `RowError` naming the line."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise RowError(path, line, "json", f"invalid JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        raise RowError(path, line, "json", "nested too deeply") from None


def check_text(value: str, path: str, line: int, field: str) -> None:
    """A string that JSON allows but text does not: a lone surrogate escape such as \\ud800 (not encodable)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise RowError(path, line, field, f"holds a lone surrogate {value[exc.start]!r}, which is not text") from None


def iter_text_lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """Yield (line number, text) for each non-blank line; bytes that are not UTF-8 name their line. A UTF-8 BOM and
    CRLF line ends are accepted."""
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
            if line.strip():
                yield line_no, line


def iter_json_lines(path: str | os.PathLike) -> Iterator[tuple[int, object]]:
    """Yield (line number, parsed object) for each non-blank line (`iter_text_lines`); bad JSON names its line."""
    path = os.fspath(path)
    for line_no, line in iter_text_lines(path):
        yield line_no, parse_json_line(line, path, line_no)


def read_probs(path: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """Read a probability file written by `write_probs`."""
    path = os.fspath(path)
    ids: list[str] = []
    rows: list[list[float]] = []
    first_line: dict[str, int] = {}
    for line_no, obj in iter_json_lines(path):
        if not isinstance(obj, dict) or not isinstance(obj.get("id"), str):
            raise RowError(path, line_no, "id", "missing or not a string")
        check_text(obj["id"], path, line_no, "id")
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


def file_digest(path: str) -> str:
    """sha256 of a file's bytes: what a run's results were computed from."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_arrow(path: str, table) -> None:
    """A scratch table as an Arrow IPC file, renamed into place once whole (not synced: scratch, rebuilt by a
    rerun); `read_arrow` maps it back without copying."""
    import pyarrow as pa

    tmp = f"{path}.{os.getpid()}.tmp"
    with pa.OSFile(tmp, "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    os.replace(tmp, path)


def read_arrow(path: str):
    """A table `write_arrow` wrote, memory-mapped: its pages are read when used."""
    import pyarrow as pa

    return pa.ipc.open_file(pa.memory_map(path)).read_all()  # the map lives as long as the table's buffers
