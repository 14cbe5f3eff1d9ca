"""Padded batches straight from Arrow: token-id columns become one numpy fill per batch, with no per-row Python
work (the tokenizer's `pad` and per-row formatting cost more than the tiny model's forward pass)."""

from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa
import torch
from datasets import Dataset

__all__ = [
    "MODEL_INPUTS",
    "column_array",
    "length_order",
    "padded_width",
    "pad_table",
    "PaddingCollator",
]


# token-id columns a classifier takes (target_mask: a target_pool head's, see heads.py)
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "target_mask")
_PAD_VALUES = {"input_ids": None, "attention_mask": 0, "token_type_ids": 0, "target_mask": 0}  # None: the pad id


def column_array(rows: Dataset, name: str) -> np.ndarray:
    """A scalar column as numpy, in the dataset's (possibly selected/reordered) row order, without Python lists."""
    return rows.with_format("arrow")[name].to_numpy()


def length_order(rows: Dataset) -> np.ndarray:
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
