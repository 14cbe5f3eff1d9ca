"""The offline backbone: Korean-safe tokenizer, and save/load like any hub checkpoint."""

import random
import unicodedata

import pytest
import torch
from conftest import SAMPLE_TRAIN
from tokenizers import Tokenizer, models

from nikl_emotion.backends.backbone import (
    _numbered_wordpiece,
    build_offline_backbone,
    load_model,
    load_tokenizer,
    parse_offline_spec,
    train_wordpiece_tokenizer,
)
from nikl_emotion.text.data import load_jsonl
from nikl_emotion.text.encoding import MARKER_TOKENS

HANGUL = ["오늘 공연 너무 좋았다ㅋㅋ", "엄마 생각하면 눈물이 난다 ㅠㅠ", "힝 뷁 똠얌꿍", "&name1& 진짜 최고!!"]


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    texts = load_jsonl(SAMPLE_TRAIN)["text"]
    return build_offline_backbone(texts, str(tmp_path_factory.mktemp("bb")), "offline:bert-tiny", vocab_size=1000)


def test_tokenizer_round_trip_keeps_hangul_ids(backbone):
    tokenizer = load_tokenizer(backbone)
    reloaded_dir = backbone + "_copy"
    tokenizer.save_pretrained(reloaded_dir)
    reloaded = load_tokenizer(reloaded_dir)
    for text in HANGUL:
        assert reloaded(text)["input_ids"] == tokenizer(text)["input_ids"]
        tokens = tokenizer.tokenize(text)
        # no NFD: syllables stay syllables, never jamo sequences
        assert all(unicodedata.normalize("NFC", t) == t for t in tokens)
        assert "공연" in "".join(tokenizer.tokenize("오늘 공연")).replace("##", "")
        assert tokenizer.unk_token_id not in tokenizer("오늘 공연 너무 좋아서 행복해")["input_ids"]


def test_marker_tokens_are_single_tokens(backbone):
    tokenizer = load_tokenizer(backbone, with_markers=True)
    for marker in MARKER_TOKENS:
        assert tokenizer.tokenize(f"가 {marker} 나")[1] == marker


def test_model_saves_and_loads_with_task_labels(backbone, tmp_path):
    tokenizer = load_tokenizer(backbone)
    model = load_model(backbone, tokenizer)
    assert model.config.problem_type == "multi_label_classification"
    assert model.config.id2label[0] == "joy" and model.config.id2label[7] == "sadness"
    model.save_pretrained(tmp_path / "m")
    again = load_model(str(tmp_path / "m"), tokenizer)
    batch = tokenizer(HANGUL, padding=True, return_tensors="pt")
    model.eval(), again.eval()
    with torch.no_grad():
        assert torch.allclose(model(**batch).logits, again(**batch).logits)


def test_bad_offline_spec_is_explained():
    assert parse_offline_spec("offline:electra-small") == ("electra", "small")
    with pytest.raises(ValueError, match="offline:bert-tiny"):
        parse_offline_spec("offline:gpt-huge")


def test_the_tokenizer_numbers_its_pieces_by_the_vocabulary_alone():
    # the trainer numbers pieces in a hash map's order, seeded anew in each process (huggingface/tokenizers#1794):
    # the same pieces numbered in another order must come out numbered alike, the special tokens where they were
    texts = load_jsonl(SAMPLE_TRAIN)["text"]
    trained = train_wordpiece_tokenizer(texts, vocab_size=1000)._tokenizer
    vocab = trained.get_vocab(with_added_tokens=False)
    special = [piece for piece, _ in sorted(vocab.items(), key=lambda item: item[1])][: len(MARKER_TOKENS) + 5]
    others = [piece for piece in vocab if piece not in special]
    random.Random(0).shuffle(others)  # another process's order
    shuffled = Tokenizer.from_str(trained.to_str())
    shuffled.model = models.WordPiece(vocab={p: i for i, p in enumerate(special + others)}, unk_token="[UNK]")
    assert shuffled.get_vocab(with_added_tokens=False) != vocab
    shuffled.model = _numbered_wordpiece(set(shuffled.get_vocab(with_added_tokens=False)))
    assert shuffled.get_vocab(with_added_tokens=False) == vocab
    assert [shuffled.token_to_id(t) for t in special] == list(range(len(special)))
    assert shuffled.encode(texts[0]).ids == trained.encode(texts[0]).ids
