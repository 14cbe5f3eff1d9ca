"""Errors a user can act on: every message names where the problem is."""

from __future__ import annotations

__all__ = [
    "PipelineError",
    "RowError",
]


class PipelineError(Exception):
    """A problem with the user's input or configuration; reported as one `error: ...` line."""


class RowError(PipelineError):
    """A bad row in a jsonl file: formats as `file:line: field: what is wrong`."""

    def __init__(self, path: str, line: int | None, field: str, message: str):
        self.path, self.line, self.field, self.message = path, line, field, message
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {field}: {message}")

    def __reduce__(self):  # picklable, so it survives datasets' multiprocessing
        return (RowError, (self.path, self.line, self.field, self.message))
