"""Sequence packing for post-training: the task's short texts, each encoded whole as fine-tuning encodes it,
concatenated into blocks of up to `max_seq_length` tokens.

NIKL texts are ~40 tokens against a 200-token limit, so a length-grouped MLM batch is mostly one short text per
row: packing puts several in a row, and a step learns from several times the text for a little more compute per
token (Cramming packs too). Each text keeps its own [CLS] ... [SEP] target [SEP], token types and positions
(restarting at 0, as fine-tuning sees them); attention spans the block (the texts see each other), as in BERT's and
Cramming's packed pretraining. A text is never split; one longer than the block stays alone.
"""

from __future__ import annotations

from datasets import Dataset

__all__ = ["pack_rows"]

_PER_TOKEN = ("input_ids", "attention_mask", "token_type_ids", "offset_mapping")
_CHUNK = 2000  # rows packed together (a block never spans two chunks: at most one part-filled block per chunk)


def pack_rows(encoded: Dataset, max_length: int) -> Dataset:
    """`encoded` (per-token columns and `length`) -> blocks of up to `max_length` tokens with `position_ids`, in
    the rows' order, first fit."""
    columns = [c for c in _PER_TOKEN if c in encoded.column_names]

    def pack(batch):
        blocks = {name: [] for name in (*columns, "position_ids", "length")}
        current = {name: [] for name in (*columns, "position_ids")}

        def close():
            if current["input_ids"]:
                for name in current:
                    blocks[name].append(current[name])
                    current[name] = []
                blocks["length"].append(len(blocks["input_ids"][-1]))

        for row in range(len(batch["input_ids"])):
            size = len(batch["input_ids"][row])
            if current["input_ids"] and len(current["input_ids"]) + size > max_length:
                close()
            for name in columns:
                current[name].extend(batch[name][row])
            current["position_ids"].extend(range(size))
        close()
        return blocks

    return encoded.map(
        pack,
        batched=True,
        batch_size=_CHUNK,
        remove_columns=encoded.column_names,
        desc=f"packing rows into blocks of {max_length} tokens",
    )
