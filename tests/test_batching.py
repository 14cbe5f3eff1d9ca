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
