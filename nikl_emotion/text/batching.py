"""Padded batches straight from Arrow: token-id columns become one numpy fill per batch, with no per-row Python
work (the tokenizer's `pad` and per-row formatting cost more than the tiny model's forward pass)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from nikl_emotion.base.errors import PipelineError
from nikl_emotion.text.data import RowTable, arrow_column

__all__ = [
    "MODEL_INPUTS",
    "column_array",
    "length_order",
    "padded_width",
    "pad_table",
    "batch_starts",
    "Padding",
    "SortedBatches",
    "PaddingCollator",
]


# token-id columns a classifier takes (target_mask: a target_pool head's, see heads.py)
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "target_mask")
_PAD_VALUES = {"input_ids": None, "attention_mask": 0, "token_type_ids": 0, "target_mask": 0}  # None: the pad id


def column_array(rows: RowTable, name: str) -> np.ndarray:
    """A scalar column as numpy, in the rows' order."""
    return arrow_column(rows, name).to_numpy()


def length_order(rows: RowTable) -> np.ndarray:
    """Row indices, longest first (an out-of-memory shows at the first batch); stable, so ties keep file order."""
    return np.argsort(-column_array(rows, "length"), kind="stable")


def _pad_value(name: str, pad_token_id: int) -> int:
    value = _PAD_VALUES.get(name, 0)
    return pad_token_id if value is None else value


def padded_width(lengths: np.ndarray, pad_to_multiple_of: int | None = None) -> int:
    width = int(lengths.max()) if len(lengths) else 0
    return -(-width // pad_to_multiple_of) * pad_to_multiple_of if pad_to_multiple_of else width


def _fill_padded(values: np.ndarray, lengths: np.ndarray, width: int, _pad_value: int) -> np.ndarray:
    """Rows of `lengths` tokens, concatenated in `values`, as a right-padded (rows, width) int64 matrix."""
    out = np.full((len(lengths), width), _pad_value, dtype=np.int64)
    # row-major True positions are row 0's tokens, then row 1's, ...: the order of the flat values
    out[np.arange(width) < lengths[:, None]] = values
    return out


def _padded(column: pa.ChunkedArray | pa.Array, width: int, _pad_value: int) -> np.ndarray:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    offsets = column.offsets.to_numpy()  # index into `values`, which ignores the array's own slice offset
    return _fill_padded(column.values.to_numpy()[offsets[0] : offsets[-1]], np.diff(offsets), width, _pad_value)


def pad_table(
    table: pa.Table,
    columns: list[str],
    pad_token_id: int,
    pad_to_multiple_of: int | None = None,
) -> dict[str, torch.Tensor]:
    """A batch of tokenized rows (an Arrow table, e.g. `dataset.with_format("arrow")[indices]`) as right-padded
    tensors, as wide as its longest row (rounded up to a multiple)."""
    width = padded_width(np.diff(table.column(columns[0]).combine_chunks().offsets.to_numpy()), pad_to_multiple_of)
    batch = {}
    for name in columns:
        batch[name] = torch.from_numpy(_padded(table.column(name), width, _pad_value(name, pad_token_id)))
    return batch


@dataclass(frozen=True)
class Padding:
    """How a runtime's batches are padded: its input columns, the pad id, a width multiple (GPU: 8), and
    `call_tokens`: what one forward call costs beyond its padded tokens, counted in tokens, where a batch's time
    grows with its padded tokens (a CPU: rows of very different lengths are better run apart); None where padding
    is nearly free next to a call (a GPU: batches of `batch_size` rows)."""

    columns: tuple[str, ...]
    pad_token_id: int
    multiple: int | None = None
    call_tokens: int | None = None


def batch_starts(lengths: np.ndarray, batch_size: int, call_tokens: int | None = None) -> np.ndarray:
    """Where the batches begin in rows sorted longest first: every `batch_size` rows, or with `call_tokens` the
    cut (batches of at most `batch_size` rows) that costs least in padded tokens plus `call_tokens` a batch. A
    request of 14 random rows padded to its longest runs ~2x the tokens it holds; cut in three, ~1.2x."""
    rows = len(lengths)
    if call_tokens is None or rows <= 1:
        return np.arange(0, rows, batch_size)
    # cost[e]: least cost of the first e rows; a batch from s to e costs call_tokens + (e - s) * lengths[s]
    cost, begins_at = np.full(rows + 1, np.inf), np.zeros(rows + 1, dtype=np.int64)
    cost[0] = 0.0
    for start in range(rows):
        ends = np.arange(start + 1, min(rows, start + batch_size) + 1)
        through = cost[start] + call_tokens + (ends - start) * float(lengths[start])
        better = through < cost[ends]
        cost[ends[better]], begins_at[ends[better]] = through[better], start
    starts, end = [], rows
    while end:
        end = int(begins_at[end])
        starts.append(end)
    return np.asarray(starts[::-1], dtype=np.int64)


def _rows_at(encoded: RowTable, columns: list[str]):
    """index array -> those rows' `columns` as one Arrow table (one `take`)."""
    if isinstance(encoded, pa.Table):
        table = encoded.select(columns)
        return lambda index: table.take(index)
    arrow_rows = encoded.select_columns(columns).with_format("arrow")
    return lambda index: arrow_rows[index.tolist()]


class SortedBatches:
    """Encoded rows cut into batches from the rows sorted by length, longest first (little padding; an
    out-of-memory shows at once) where `batch_starts` cuts them for the runtime's padding, each padded with numpy
    from Arrow as it is iterated: (row indices, padded inputs, whether its logits count).

    With `share` (part, parts), parts > 1, only every `parts`-th batch from `part` is run, so processes that each
    run one part get every row exactly once between them. Every part yields as many batches as the largest (a part
    one short repeats its last batch, or the first, marked not to count): where the weights are split across the
    processes (ZeRO-3, FSDP) a forward pass is a collective, and a process that stopped early would leave the
    others waiting."""

    def __init__(self, encoded: RowTable, padding: Padding, batch_size: int = 128, share: tuple[int, int] = (0, 1)):
        if batch_size < 1:
            raise PipelineError(f"batch size must be at least 1, got {batch_size}")
        self.encoded, self.padding, self.batch_size = encoded, padding, batch_size
        self.rows = len(encoded)
        self._order = length_order(encoded)
        starts = batch_starts(column_array(encoded, "length")[self._order], batch_size, padding.call_tokens)
        bounds = list(zip(starts.tolist(), [*starts[1:].tolist(), self.rows], strict=True))
        part, parts = share
        self._bounds, self._first = bounds[part::parts], bounds[0] if bounds else (0, 0)
        self._steps = -(-len(bounds) // parts)  # the largest part's number of batches
        self._held: list | None = None

    def __len__(self) -> int:
        return self._steps

    def __iter__(self) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor], bool]]:
        if self._held is not None:
            yield from self._held
            return
        columns = list(self.padding.columns)
        rows_at = _rows_at(self.encoded, columns)
        for step in range(self._steps):
            start, end = self._bounds[min(step, len(self._bounds) - 1)] if self._bounds else self._first
            index = self._order[start:end]
            batch = pad_table(rows_at(index), columns, self.padding.pad_token_id, self.padding.multiple)
            yield index, batch, step < len(self._bounds)

    def held(self) -> SortedBatches:
        """These batches padded once and kept, for several runtimes to read (rows in memory: a file's chunk is
        padded per checkpoint instead, never held whole)."""
        if self._held is None:
            self._held = list(self)
        return self


class PaddingCollator:
    """Trainer collator: token-id lists padded per batch with numpy (the tokenizer's `pad` walks every row in
    Python), `labels` stacked as float; `length` is dropped (it is there for the length-grouped sampler)."""

    def __init__(self, tokenizer, pad_to_multiple_of: int | None = None):
        self.pad_token_id = tokenizer.pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        lengths = np.fromiter((len(f["input_ids"]) for f in features), dtype=np.int64, count=len(features))
        width = padded_width(lengths, self.pad_to_multiple_of)
        batch = {}
        for name in (n for n in MODEL_INPUTS if n in features[0]):
            values = np.fromiter(
                itertools.chain.from_iterable(f[name] for f in features), dtype=np.int64, count=int(lengths.sum())
            )
            batch[name] = torch.from_numpy(_fill_padded(values, lengths, width, _pad_value(name, self.pad_token_id)))
        if "labels" in features[0]:
            batch["labels"] = torch.tensor(np.asarray([f["labels"] for f in features], dtype=np.float32))
        return batch
