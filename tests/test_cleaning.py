"""Cleaning: the KcBERT recipe exactly, and the target span kept aligned through every edit."""

import random
import re

import emoji
import pytest

from nikl_emotion.text.cleaning import CleaningOptions, clean_batch, clean_text

# The reference recipe, written out literally (KcBERT's `clean` with soynlp's `repeat_normalize`).
_KC_PATTERN = re.compile("[^ .,?!/@$%~％·∼()\x00-\x7fㄱ-ㅣ가-힣]+")
_KC_URL = re.compile(
    r"https?:\/\/(www\.)?[-a-zA-Z0-9@:%._\+~#=]{1,256}\.[a-zA-Z0-9()]{1,6}\b([-a-zA-Z0-9()@:%_\+.~#?&//=]*)"
)


def kcbert_clean(x: str) -> str:
    x = _KC_PATTERN.sub(" ", x)
    x = emoji.replace_emoji(x, replace="")
    x = _KC_URL.sub("", x)
    x = x.strip()
    x = re.sub(r"(\w)\1{2,}", r"\1\1", x)  # soynlp repeat_normalize(num_repeats=2)
    x = re.sub(r"\s+", " ", x)
    return x.strip()


PIECES = [
    "가",
    "나",
    "다",
    "사랑",
    "공연",
    "ㅋ",
    "ㅋㅋㅋㅋ",
    "ㅠㅠㅠ",
    "a",
    "B",
    "7",
    " ",
    " ",
    "  ",
    "\t",
    "...",
    "!!!",
    "?",
    "♥",
    "★",
    "😀",
    "👍🏻",
    "漢",
    "&others&",
    "&name1&",
    "https://t.co/abc ",
    "~~~",
    "％",
    "·",
    "(",
    ")",
    "é",
]


def random_case(rng: random.Random) -> tuple[str, tuple[int, int] | None]:
    text = "".join(rng.choice(PIECES) for _ in range(rng.randint(1, 14)))
    if not text.strip() or rng.random() < 0.1:
        return text, None
    begin = rng.randint(0, len(text) - 1)
    return text, (begin, rng.randint(begin + 1, len(text)))


def strip_span(text: str, begin: int, end: int) -> tuple[int, int]:
    while begin < end and text[begin].isspace():
        begin += 1
    while end > begin and text[end - 1].isspace():
        end -= 1
    return begin, end


def test_reference_examples():
    options = CleaningOptions()
    assert (
        clean_text("사람이... 어떻게 이렇게 청초하게 생겼지...? &others&", None, options)[0]
        == "사람이... 어떻게 이렇게 청초하게 생겼지...?"
    )
    assert clean_text("대인배ㅠㅠㅋㅋㅋㅋㅋㅋ 😀 짱♥♥", None, options)[0] == "대인배ㅠㅠㅋㅋ 짱"
    assert clean_text("링크 https://example.com/a?b=1 보세요", None, options)[0] == "링크 보세요"


def test_options_off_leaves_text_untouched():
    text = "  그대로 &others& 😀 ㅋㅋㅋㅋ  "
    assert clean_text(text, (2, 5), CleaningOptions(False, False, False, False)) == (text, (2, 5))


def test_placeholder_switches():
    text = "&name1& 진짜 최고 &others&"
    assert clean_text(text, None, CleaningOptions(remove_others=True, cleanse=False))[0] == "&name1& 진짜 최고"
    assert clean_text(text, None, CleaningOptions(remove_placeholders=True, cleanse=False))[0] == "진짜 최고"
    assert (
        clean_text("좋아 😀👍 ㅋㅋㅋㅋ", None, CleaningOptions(remove_others=False, cleanse=False, remove_emoji=True))[
            0
        ]
        == "좋아 ㅋㅋㅋㅋ"
    )


def test_cleaned_text_equals_reference_recipe_on_many_inputs():
    rng = random.Random(0)
    options = CleaningOptions(remove_others=False)
    for _ in range(3000):
        text, span = random_case(rng)
        assert clean_text(text, span, options)[0] == kcbert_clean(text), repr(text)


def test_target_span_matches_an_independent_sentinel_reference():
    """Wrap the target in control characters the recipe keeps, clean with the literal recipe, read the span off.

    Where the sentinels change the cleaning itself (they split a repeat run, a URL or a space run) the case is
    skipped; most cases are compared.
    """
    rng = random.Random(1)
    options = CleaningOptions(remove_others=False)
    compared = 0
    for _ in range(3000):
        text, span = random_case(rng)
        if span is None:
            continue
        new_text, new_span = clean_text(text, span, options)
        assert 0 <= new_span[0] <= new_span[1] <= len(new_text)
        marked = kcbert_clean(text[: span[0]] + "\x02" + text[span[0] : span[1]] + "\x03" + text[span[1] :])
        if marked.replace("\x02", "").replace("\x03", "") != new_text:
            continue
        begin = marked.index("\x02")
        end = marked.index("\x03") - 1
        expected = strip_span(new_text, begin, end)
        if expected[0] == expected[1] and new_span[0] == new_span[1]:
            compared += 1  # both empty: position of an empty span is free to differ by a space
            continue
        assert new_span == expected, (text, span, new_text)
        compared += 1
    assert compared > 1500


@pytest.mark.parametrize("remove_others", [True, False])
def test_clean_batch_keeps_targets_aligned(remove_others):
    batch = {
        "text": ["오늘 공연 ♥♥ 너무 좋았다 &others&", "ㅋㅋㅋㅋㅋ 기현이 순간 &others&", "그냥 글"],
        "target": ["공연", "순간", None],
        "target_begin": [3, 10, None],
        "target_end": [5, 12, None],
    }
    out = clean_batch(batch, CleaningOptions(remove_others=remove_others))
    for text, target, begin, end in zip(out["text"], out["target"], out["target_begin"], out["target_end"]):
        if target is not None:
            assert text[begin:end] == target
    assert out["text"][1].startswith("ㅋㅋ 기현이 순간")
    assert out["target"][2] is None and out["target_begin"][2] is None


def test_target_removed_by_cleaning_keeps_its_form_and_an_empty_span():
    out = clean_batch(
        {"text": ["좋다 😀 진짜"], "target": ["😀"], "target_begin": [3], "target_end": [4]}, CleaningOptions()
    )
    assert out["text"] == ["좋다 진짜"]
    assert out["target"] == ["😀"]
    assert out["target_begin"][0] == out["target_end"][0]


def test_the_emoji_step_skips_only_texts_that_cannot_hold_an_emoji():
    from nikl_emotion.text.cleaning import _emoji_edits

    # the shortcut's premise: every emoji the library finds has a character outside ASCII
    assert all(any(not char.isascii() for char in known) for known in emoji.EMOJI_DATA)
    rng = random.Random(7)
    known = sorted(emoji.EMOJI_DATA)
    texts = ["오늘 공연 너무 좋았다", "plain ascii :) <3 #1 *", "1\ufe0f\u20e3 keycap", "가\u200d나", ""]
    texts += ["".join(rng.choice(PIECES + known[:300] + known[-300:]) for _ in range(12)) for _ in range(300)]
    for text in texts:
        expected = [(e["match_start"], e["match_end"], "") for e in emoji.emoji_list(text)]
        assert _emoji_edits(text, "") == expected, text
