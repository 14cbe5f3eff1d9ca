"""Rows in memory (a request, a few dicts) are cleaned and encoded without `datasets`, to exactly the ids and masks
the cached `map` of a file gives; and a run's folds encode the rows once."""

import dataclasses
import json

import numpy as np
import pytest
from conftest import NIKL_DIR, SAMPLE_DEV, write_jsonl

import nikl_emotion.backends.classifier as classifier_module
from nikl_emotion import EmotionClassifier
from nikl_emotion.backends.backbone import load_tokenizer, train_wordpiece_tokenizer
from nikl_emotion.backends.classifier import SharedEncodings
from nikl_emotion.runs.prediction import checkpoint_loader
from nikl_emotion.serving.served_model import ServedModel
from nikl_emotion.text.cleaning import CleaningOptions
from nikl_emotion.text.data import load_jsonl, records_table
from nikl_emotion.text.preprocessing import Preprocessing, clean, encode

COLUMNS = ("input_ids", "attention_mask", "token_type_ids", "target_mask", "length")
CLEANED = ("text", "target", "target_begin", "target_end")
FORMATS = [  # (input_format, classifier_head): every format with every head it may be trained with
    ("pair", "cls"),
    ("pair", "target_pool"),
    ("marker", "cls"),
    ("marker", "target_pool"),
    ("prompt", "target_pool"),
    ("text", "cls"),
    ("instruction", "cls"),
]
CLEANINGS = {
    "none": (CleaningOptions(False, False, False, False), "none"),
    "default": (CleaningOptions(), "none"),
    "all": (CleaningOptions(True, True, True, True), "none"),
    "kiwi": (CleaningOptions(), "kiwi"),
}
LONG = "앞부분 이야기 " * 60


def _row(row_id, form, target=None):
    span = (
        None
        if target is None
        else {"form": target, "begin": form.index(target), "end": form.index(target) + len(target)}
    )
    return {"id": row_id, "input": {"form": form, "target": span}}


# what stresses the encoding: a target far past max_seq_length (the marker window), one cleaning empties, a text
# cleaning empties, placeholders, a null target, repeats and symbols cleansing changes
HOSTILE = [
    _row("long", LONG + "마지막 공연 정말 좋았다", "공연"),
    _row("emoji-target", "오늘은 😀😀 최고", "😀😀"),
    _row("emoji-only", "😀😀😀"),
    _row("others", "&others& 너무 좋다 &name1& 씨", "&name1&"),
    _row("repeats", "ㅋㅋㅋㅋㅋ 진짜 웃기다!!!! ♥♥ 영화", "영화"),
]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    train_wordpiece_tokenizer(load_jsonl(SAMPLE_DEV)["text"], vocab_size=800).save_pretrained(folder)
    return load_tokenizer(str(folder), with_markers=True)


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    records = [json.loads(line) for line in SAMPLE_DEV.read_text(encoding="utf-8").splitlines()[:60]] + HOSTILE
    return records, write_jsonl(tmp_path_factory.mktemp("rows") / "rows.jsonl", records)


def _columns(encoded, names):
    present = [name for name in names if name in encoded.column_names]
    if hasattr(encoded, "to_pydict"):  # an Arrow table: the small-batch path
        return encoded.select(present).to_pydict()
    return encoded.select_columns(present).to_dict()


def _both_paths(records, path, tokenizer, preprocessing):
    on_disk = encode(clean(load_jsonl(path, "optional"), preprocessing), tokenizer, preprocessing, on_unknown="warn")
    in_memory = encode(clean(records_table(records), preprocessing), tokenizer, preprocessing, on_unknown="warn")
    assert not hasattr(on_disk, "to_pydict") and hasattr(in_memory, "to_pydict")
    return on_disk, in_memory


@pytest.mark.parametrize("cleaning", sorted(CLEANINGS))
@pytest.mark.parametrize("input_format,head", FORMATS)
def test_rows_in_memory_encode_as_the_cached_map_does(tokenizer, rows, input_format, head, cleaning):
    options, pretokenizer = CLEANINGS[cleaning]
    inputs = ("target_mask",) if head == "target_pool" else ()
    preprocessing = Preprocessing(options, input_format, 24, pretokenizer, head, head_inputs=inputs)
    on_disk, in_memory = _both_paths(*rows, tokenizer, preprocessing)
    expected = _columns(on_disk, COLUMNS + CLEANED)
    assert ("target_mask" in expected) == (head == "target_pool")
    assert _columns(in_memory, COLUMNS + CLEANED) == expected


def test_a_request_bigger_than_one_in_memory_batch_keeps_its_order_and_types(tokenizer, tmp_path, monkeypatch):
    import nikl_emotion.text.preprocessing as preprocessing_module

    monkeypatch.setattr(preprocessing_module, "_IN_MEMORY_BATCH", 7)  # batches of 7: a null-target-only one too
    records = [_row(str(i), f"문장 {i} 공연", "공연" if i % 9 else None) for i in range(40)]
    records += [_row(f"n{i}", f"타깃 없는 문장 {i}") for i in range(8)]
    preprocessing = Preprocessing(CleaningOptions(), "marker", 16, "none", "target_pool", head_inputs=("target_mask",))
    on_disk, in_memory = _both_paths(records, write_jsonl(tmp_path / "r.jsonl", records), tokenizer, preprocessing)
    assert _columns(in_memory, COLUMNS + CLEANED) == _columns(on_disk, COLUMNS + CLEANED)


@pytest.mark.skipif(not NIKL_DIR.is_dir(), reason=f"NIKL data not found in {NIKL_DIR}")
@pytest.mark.parametrize("input_format,head", [("pair", "target_pool"), ("marker", "target_pool"), ("prompt", "cls")])
def test_nikl_rows_encode_alike_on_both_paths(tokenizer, tmp_path, input_format, head):
    lines = (NIKL_DIR / "dev.jsonl").read_text(encoding="utf-8").splitlines()[:1500]
    records = [json.loads(line) for line in lines]
    inputs = ("target_mask",) if head == "target_pool" else ()
    preprocessing = Preprocessing(CleaningOptions(), input_format, 64, "none", head, head_inputs=inputs)
    path = tmp_path / "dev_part.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    on_disk, in_memory = _both_paths(records, path, tokenizer, preprocessing)
    assert _columns(in_memory, COLUMNS) == _columns(on_disk, COLUMNS)


@pytest.fixture
def encodings_made(monkeypatch):
    """How many times rows were tokenized, counted where the classifier calls the encoding."""
    calls = []
    real = classifier_module.encode

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(classifier_module, "encode", counting)
    return calls


def test_a_runs_folds_encode_the_rows_once(tiny_run, rows, encodings_made):
    records, path = rows
    run = EmotionClassifier.from_pretrained(tiny_run, device="cpu")
    assert len(run.checkpoints()) == 2
    from_memory = run.predict_proba(records)
    assert len(encodings_made) == 1
    from_file = run.predict_proba(path)
    assert len(encodings_made) == 2
    np.testing.assert_allclose(from_memory, from_file, atol=1e-6)
    served = ServedModel(str(tiny_run), checkpoint_loader("cpu"))
    decisions, probs = served.predict([dict(r, id=str(i)) for i, r in enumerate(records)])
    assert len(encodings_made) == 3
    np.testing.assert_allclose(probs, from_file, atol=1e-6)


def test_checkpoints_that_read_rows_differently_encode_them_apart(tiny_run, rows):
    fold = EmotionClassifier.from_pretrained(tiny_run / "fold_0" / "best", device="cpu")
    same = EmotionClassifier.from_pretrained(tiny_run / "fold_1" / "best", device="cpu")
    assert fold.encoding_key == same.encoding_key  # one run: one tokenizer's files, one preprocessing
    shorter = dataclasses.replace(fold.preprocessing, max_seq_length=12)
    other = classifier_module.CheckpointClassifier(
        fold.runtime, fold.tokenizer, shorter, encoding_key=(*fold.encoding_key[:2], shorter)
    )
    shared = SharedEncodings(rows[0])
    first, again, short = (model.predict_proba(shared) for model in (fold, same, other))
    assert shared.encodings == 2
    np.testing.assert_array_equal(first, fold.predict_proba(rows[0]))
    assert not np.allclose(short, first, atol=1e-6)  # not the other checkpoint's encoding reused
