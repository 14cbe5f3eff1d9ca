"""On the real NIKL files (when present): every row validates, and cleaning keeps every target aligned."""

import numpy as np
import pytest
from conftest import NIKL_DIR

from nikl_emotion.text.cleaning import CleaningOptions
from nikl_emotion.text.data import load_jsonl, load_jsonl_files
from nikl_emotion.text.preprocessing import Preprocessing, clean

pytestmark = pytest.mark.skipif(not NIKL_DIR.is_dir(), reason=f"NIKL data not found in {NIKL_DIR}")


def test_train_dev_and_test_load_and_validate():
    train = load_jsonl_files([str(NIKL_DIR / "train.jsonl"), str(NIKL_DIR / "dev.jsonl")])
    test = load_jsonl(NIKL_DIR / "test.jsonl", "optional")
    labels = np.asarray(train["labels"])
    assert labels.shape[1] == 8 and labels.sum(axis=1).min() >= 1  # every gold row has a label
    assert all(row is None for row in test["labels"])
    null_targets = sum(target is None for target in train["target"]) / len(train)
    assert 0.05 < null_targets < 0.12  # ~8.4% per the data README


def test_cleaning_keeps_every_real_target_aligned():
    rows = load_jsonl(NIKL_DIR / "dev.jsonl")
    cleaned = clean(rows, Preprocessing(CleaningOptions(remove_others=True, cleanse=True)))
    emptied = 0
    for text, target, begin, end in zip(
        cleaned["text"], cleaned["target"], cleaned["target_begin"], cleaned["target_end"]
    ):
        if target is None:
            continue
        if begin == end:
            emptied += 1
            continue
        assert text[begin:end] == target
        assert "&others&" not in text
    assert emptied < 0.01 * len(rows)
