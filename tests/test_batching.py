"""Numpy padding (Arrow batches at inference, the Trainer collator in training) against the tokenizer's own `pad`."""

import numpy as np
import pytest
import torch
from conftest import SAMPLE_TRAIN
from datasets import Dataset

from nikl_emotion.backends.backbone import train_wordpiece_tokenizer
from nikl_emotion.text.batching import PaddingCollator, column_array, pad_table
from nikl_emotion.text.cleaning import CleaningOptions
from nikl_emotion.text.data import load_jsonl
from nikl_emotion.text.preprocessing import Preprocessing, clean, encode

COLUMNS = ["input_ids", "attention_mask", "token_type_ids"]


@pytest.fixture(scope="module")
def encoded():
    rows = load_jsonl(SAMPLE_TRAIN)
    tokenizer = train_wordpiece_tokenizer(rows["text"], vocab_size=500)
    pre = Preprocessing(CleaningOptions())
    data = encode(clean(rows, pre), tokenizer, pre)
    # reordered and subset rows: an indices mapping over several Arrow chunks, as after a fold's `select`
    rng = np.random.default_rng(0)
    return tokenizer, data.select(rng.permutation(len(data))[:150])


def reference_pad(tokenizer, rows, multiple=None):
    features = [{k: rows[i][k] for k in COLUMNS} for i in range(len(rows))]
    return tokenizer.pad(features, pad_to_multiple_of=multiple, return_tensors="pt")


@pytest.mark.parametrize("multiple", [None, 8])
def test_arrow_batches_equal_the_tokenizers_padding(encoded, multiple):
    tokenizer, data = encoded
    arrow_rows = data.select_columns(COLUMNS).with_format("arrow")
    index = np.array([5, 0, 149, 77, 3, 3])  # any order, repeats allowed
    batch = pad_table(arrow_rows[index.tolist()], COLUMNS, tokenizer.pad_token_id, multiple)
    expected = reference_pad(tokenizer, data.select(index), multiple)
    assert set(batch) == set(COLUMNS)
    for name in COLUMNS:
        torch.testing.assert_close(batch[name], expected[name].long(), msg=name)
    assert len(set(column_array(data.select(index), "length"))) > 1  # the rows really had different lengths


@pytest.mark.parametrize("multiple", [None, 8])
def test_collator_equals_the_tokenizers_padding_and_drops_length(encoded, multiple):
    tokenizer, data = encoded
    features = [data[i] for i in range(12)]
    batch = PaddingCollator(tokenizer, multiple)(features)
    expected = reference_pad(tokenizer, data.select(range(12)), multiple)
    for name in COLUMNS:
        torch.testing.assert_close(batch[name], expected[name].long(), msg=name)
    torch.testing.assert_close(batch["labels"], torch.tensor([f["labels"] for f in features], dtype=torch.float32))
    assert "length" not in batch and batch["labels"].dtype == torch.float32


def test_column_array_follows_the_selected_order():
    data = Dataset.from_dict({"length": [3, 1, 2, 5]}).select([3, 0, 2])
    assert column_array(data, "length").tolist() == [5, 3, 2]


def _cheapest_by_enumeration(lengths, batch_size, call_tokens):
    """Every way to cut the sorted rows into contiguous batches of at most `batch_size`: the least cost."""
    import itertools

    best = None
    for cuts in itertools.product((False, True), repeat=len(lengths) - 1):
        starts = [0, *(i + 1 for i, cut in enumerate(cuts) if cut)]
        ends = [*starts[1:], len(lengths)]
        if any(end - start > batch_size for start, end in zip(starts, ends, strict=True)):
            continue
        cost = sum(call_tokens + (end - start) * lengths[start] for start, end in zip(starts, ends, strict=True))
        best = cost if best is None else min(best, cost)
    return best


@pytest.mark.parametrize("seed", range(6))
def test_a_cpus_batches_are_the_cheapest_cut_of_the_sorted_rows(seed):
    from nikl_emotion.text.batching import batch_starts

    rng = np.random.default_rng(seed)
    lengths = np.sort(rng.integers(4, 120, size=11))[::-1]
    batch_size, call_tokens = int(rng.integers(2, 8)), int(rng.integers(0, 300))
    starts = batch_starts(lengths, batch_size, call_tokens)
    ends = [*starts[1:], len(lengths)]
    assert starts[0] == 0 and all(0 < end - start <= batch_size for start, end in zip(starts, ends, strict=True))
    cost = sum(call_tokens + (end - start) * lengths[start] for start, end in zip(starts, ends, strict=True))
    assert cost == _cheapest_by_enumeration(lengths, batch_size, call_tokens)
    # a GPU's (no call cost given): every batch_size rows, as before
    assert batch_starts(lengths, batch_size).tolist() == list(range(0, len(lengths), batch_size))


def test_a_few_long_rows_among_short_ones_run_apart_on_a_cpu_and_every_part_gets_each_row_once(encoded):
    from nikl_emotion.text.batching import Padding, SortedBatches

    _, data = encoded
    lengths = column_array(data, "length")
    cpu = Padding(("input_ids", "attention_mask"), 0, None, call_tokens=64)
    whole = list(SortedBatches(data, cpu, batch_size=128))
    # cut where the rows shorten: fewer padded tokens than the fixed cut of 128 rows, then 22
    fixed = list(SortedBatches(data, Padding(("input_ids", "attention_mask"), 0), batch_size=128))
    assert len(whole) > len(fixed) == 2
    assert sum(b["input_ids"].numel() for _, b, _ in whole) < sum(b["input_ids"].numel() for _, b, _ in fixed)
    for parts in (1, 2, 3):
        shares = [SortedBatches(data, cpu, 128, (part, parts)) for part in range(parts)]
        assert len({len(share) for share in shares}) == 1  # every process runs as many steps
        seen = [row for share in shares for index, _, counts in share if counts for row in index.tolist()]
        assert sorted(seen) == list(range(len(lengths)))
