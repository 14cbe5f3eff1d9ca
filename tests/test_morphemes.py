"""Morpheme-aware pre-tokenization (`offline_pretokenizer: kiwi`): text and target spans stay right, the setting
travels with every checkpoint, and a backbone is never fed text segmented otherwise than its tokenizer learned."""

import json

import pytest
from conftest import ROOT, SAMPLE_TEST, nikl_row, run_cli, write_jsonl

from nikl_emotion.base.errors import PipelineError
from nikl_emotion.text.cleaning import CleaningOptions
from nikl_emotion.text.data import load_jsonl
from nikl_emotion.text.morphemes import morpheme_strings, segment_batch
from nikl_emotion.text.preprocessing import PREPROCESSING_FILE, Preprocessing, clean
from nikl_emotion.training.config_checks import check_pretokenizer


def segmented(text, target=None, begin=None, end=None):
    batch = segment_batch({"text": [text], "target": [target], "target_begin": [begin], "target_end": [end]})
    return batch["text"][0], batch["target"][0], batch["target_begin"][0], batch["target_end"][0]


def test_segmentation_only_adds_spaces_at_morpheme_boundaries():
    text = "아이폰이 정말 좋아요"
    new, *_ = segmented(text)
    assert new.replace(" ", "") == text.replace(" ", "")
    assert new.split() == ["아이폰", "이", "정말", "좋", "아요"]


def test_a_contracted_syllable_is_not_split():
    # 생겼지 = 생기 + 었 + 지: 겼 holds two morphemes, so the only boundary is before 지
    assert segmented("생겼지")[0] == "생겼 지"
    assert segmented("난")[0] == "난"  # 나 + ㄴ in one syllable


@pytest.mark.parametrize(
    "text, begin, end",
    [
        ("난 정말 청초하게 생겼지...? 했어", 5, 9),  # a target inside the text
        ("아이폰이 좋아요", 0, 4),  # at the start, ending on a boundary
        ("오늘은 공연이 최고였다", 8, 12),  # at the end
    ],
)
def test_the_target_span_still_covers_the_target(text, begin, end):
    form = text[begin:end]
    new, target, new_begin, new_end = segmented(text, form, begin, end)
    assert new[new_begin:new_end].replace(" ", "") == form.replace(" ", "")
    assert not new[new_begin].isspace() and not new[new_end - 1].isspace()
    assert target.replace(" ", "") == form.replace(" ", "")  # the pair encoding's second segment, segmented too


def test_null_targets_stay_null():
    assert segmented("정말 좋아요")[1:] == (None, None, None)


def test_morpheme_strings_carry_form_and_tag():
    assert morpheme_strings(["좋아요"]) == ["좋/VA 어요/EF"]


def test_the_pretokenizer_is_saved_with_the_preprocessing_and_old_checkpoints_read_none(tmp_path):
    Preprocessing(CleaningOptions(), pretokenizer="kiwi").save(tmp_path)
    assert Preprocessing.load(tmp_path).pretokenizer == "kiwi"
    data = json.loads((tmp_path / PREPROCESSING_FILE).read_text())
    del data["pretokenizer"]
    (tmp_path / PREPROCESSING_FILE).write_text(json.dumps(data))
    assert Preprocessing.load(tmp_path).pretokenizer == "none"


def test_clean_segments_after_cleaning(tmp_path):
    path = write_jsonl(
        tmp_path / "rows.jsonl", [nikl_row("a", form="&others& 공연이 정말 좋았다!!!!", target=("공연이", 9, 12))]
    )
    row = clean(load_jsonl(path), Preprocessing(CleaningOptions(), pretokenizer="kiwi"))[0]
    assert row["text"] == "공연 이 정말 좋 았 다 !!!!"
    assert row["text"][row["target_begin"] : row["target_end"]] == "공연 이" == row["target"]


def test_a_backbone_must_be_fed_text_segmented_as_its_tokenizer_learned(tmp_path):
    check_pretokenizer("offline:electra-tiny", "kiwi")  # its tokenizer is trained on the segmented text
    hub_like = tmp_path / "hub"
    hub_like.mkdir()
    with pytest.raises(PipelineError, match="offline_pretokenizer: kiwi does not fit"):
        check_pretokenizer(str(hub_like), "kiwi")
    post_trained = tmp_path / "post"
    Preprocessing(CleaningOptions(), pretokenizer="kiwi").save(post_trained)
    with pytest.raises(
        PipelineError, match="post-trained with offline_pretokenizer: kiwi; set offline_pretokenizer: kiwi"
    ):
        check_pretokenizer(str(post_trained), "none")
    check_pretokenizer(str(post_trained), "kiwi")


def test_a_kiwi_run_trains_its_tokenizer_on_morphemes_and_predicts_like_it_trained(tmp_path):
    out = tmp_path / "out"
    run_cli(
        "train.py",
        ROOT / "configs" / "quickstart.yaml",
        "--offline_pretokenizer",
        "kiwi",
        "--output_dir",
        out,
        "--num_folds",
        "2",
        "--num_train_epochs",
        "2",
    )
    best = out / "fold_0" / "best"
    assert Preprocessing.load(best).pretokenizer == "kiwi"
    from nikl_emotion import EmotionClassifier

    classifier = EmotionClassifier.from_pretrained(best)
    # a vocabulary learned on segmented text: the particle is its own word, never a ## piece glued to the noun
    assert classifier.tokenizer.tokenize(segmented("공연이")[0])[-1] == "이"
    import numpy as np

    from nikl_emotion.base.fileio import read_probs

    _, written = read_probs(out / "fold_0" / "test_probs.jsonl")
    np.testing.assert_allclose(classifier.predict_proba(SAMPLE_TEST), written, atol=1e-5)
    refused = run_cli(
        "train.py",
        ROOT / "configs" / "quickstart.yaml",
        "--model_name_or_path",
        best,
        "--output_dir",
        tmp_path / "again",
        check=False,
    )
    assert refused.returncode != 0 and "set offline_pretokenizer: kiwi" in refused.stderr
