"""Target-aware encodings: pair, marker and prompt; null targets encode the text alone; no padding in map."""

import pytest
from conftest import SAMPLE_TRAIN

from nikl_emotion.backends.backbone import load_tokenizer, train_wordpiece_tokenizer
from nikl_emotion.text.data import load_jsonl
from nikl_emotion.text.encoding import PROMPT_TEMPLATE, TARGET_END, TARGET_START, segments, tokenize_batch


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    train_wordpiece_tokenizer(load_jsonl(SAMPLE_TRAIN)["text"], vocab_size=1000).save_pretrained(folder)
    return load_tokenizer(str(folder), with_markers=True)


def test_segments_per_format():
    text, target, begin, end = "오늘 공연 너무 좋았다", "공연", 3, 5
    assert segments(text, target, begin, end, "pair") == (text, "공연")
    assert segments(text, target, begin, end, "marker") == (f"오늘 {TARGET_START} 공연 {TARGET_END} 너무 좋았다", None)
    assert segments(text, target, begin, end, "prompt") == (PROMPT_TEMPLATE.format(target="공연"), text)
    assert segments(text, target, begin, end, "text") == (text, None)  # the reference's input: target ignored
    for fmt in ("pair", "marker", "prompt", "text"):
        assert segments(text, None, None, None, fmt) == (text, None)


@pytest.mark.parametrize("input_format", ["pair", "marker", "prompt", "text"])
def test_tokenize_batch_mixes_null_and_real_targets_in_order(tokenizer, input_format):
    batch = {
        "text": ["오늘 공연 너무 좋았다", "그냥 슬프다", "엄마 보고 싶다"],
        "target": ["공연", None, "엄마"],
        "target_begin": [3, None, 0],
        "target_end": [5, None, 2],
    }
    out = tokenize_batch(batch, tokenizer, input_format, max_length=64)
    for i in range(3):
        a, b = segments(
            batch["text"][i], batch["target"][i], batch["target_begin"][i], batch["target_end"][i], input_format
        )
        assert out["input_ids"][i] == tokenizer(a, b)["input_ids"]
        assert out["length"][i] == len(out["input_ids"][i])
    assert len({len(ids) for ids in out["input_ids"]}) > 1  # unpadded
    if input_format == "marker":
        ids = out["input_ids"][0]
        assert (
            tokenizer.convert_tokens_to_ids(TARGET_START) in ids and tokenizer.convert_tokens_to_ids(TARGET_END) in ids
        )


def test_truncation_keeps_the_target(tokenizer):
    long_text = "너무 좋았다 " * 100
    out = tokenize_batch(
        {"text": [long_text], "target": ["공연"], "target_begin": [0], "target_end": [2]}, tokenizer, "pair", 32
    )
    ids = out["input_ids"][0]
    assert len(ids) == 32
    assert tokenizer.convert_tokens_to_ids("공연") in ids or "공연" in tokenizer.decode(ids)


@pytest.mark.parametrize("input_format", ["pair", "marker", "prompt"])
def test_text_emptied_by_cleaning_still_encodes(tokenizer, input_format):
    batch = {"text": ["", ""], "target": ["😀", None], "target_begin": [0, None], "target_end": [0, None]}
    out = tokenize_batch(batch, tokenizer, input_format, max_length=16)
    assert all(length >= 2 for length in out["length"])  # at least [CLS] [SEP]
