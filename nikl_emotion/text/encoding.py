"""Target-aware input encodings, tokenized in a batched `map` without padding (padding happens per batch), and the
checks that a hub tokenizer fits its model and Korean text: segment ids only where the model has an embedding for
them, Hangul kept as syllables, and the unknown-token rate of what was encoded."""

from __future__ import annotations

import os
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
from transformers import PretrainedConfig, PreTrainedTokenizerBase

from nikl_emotion.base.checkpoint_files import BACKBONE_SPEC_FILE, POST_TRAIN_FILE
from nikl_emotion.base.vocabulary import DEFAULT_INPUT_TEMPLATE, INPUT_FORMATS, MAX_UNKNOWN_RATE, NO_TARGET
from nikl_emotion.text.data import RowTable, arrow_column

__all__ = [
    "TARGET_START",
    "TARGET_END",
    "MARKER_TOKENS",
    "PROMPT_TEMPLATE",
    "model_input_names",
    "splits_hangul",
    "hangul_fix",
    "unknown_token_rate",
    "unknown_rate_message",
    "add_marker_tokens",
    "CHARS_PER_TOKEN_BOUND",
    "bounded",
    "segments",
    "tokenize_batch",
    "fill_template",
]


_InputFormat = Literal["pair", "marker", "prompt", "text", "instruction"]
# text: the target is ignored (the reference pipeline's input; its to-do list names the target as unused)
# instruction: one string, `input_template` filled with the text and the target (for decoders: the last token reads all)

TARGET_START = "[TGT]"
TARGET_END = "[/TGT]"
MARKER_TOKENS: tuple[str, str] = (TARGET_START, TARGET_END)
PROMPT_TEMPLATE = "{target}에 대해 어떤 감정이 드러나나요?"


_HANGUL_PROBE = "한국어 감정 분석"


def _uses_segment_ids(config: PretrainedConfig) -> bool:
    """Whether the model has an embedding for the second segment's token type id (1). BERT and ELECTRA have two;
    RoBERTa-family models (klue/roberta, XLM-R) have one, yet klue/roberta's BERT tokenizer emits 1 for the second
    segment: fed to the model that is an index error (a device-side assert on a GPU)."""
    return (getattr(config, "type_vocab_size", None) or 0) >= 2


def model_input_names(tokenizer: PreTrainedTokenizerBase, config: PretrainedConfig) -> list[str] | None:
    """The tokenizer's model inputs for this model: without `token_type_ids` when the model cannot take them (None
    when nothing changes). Set on the tokenizer and saved with it, so every later encoding (training, inference,
    ONNX export, `pipeline()` on a saved checkpoint) agrees."""
    names = list(tokenizer.model_input_names)
    if "token_type_ids" in names and not _uses_segment_ids(config):
        return [name for name in names if name != "token_type_ids"]
    return None


def _is_syllable(char: str) -> bool:
    return "\uac00" <= char <= "\ud7a3"


def _is_conjoining_jamo(char: str) -> bool:
    return "\u1100" <= char <= "\u11ff"


def splits_hangul(tokenizer: PreTrainedTokenizerBase) -> bool:
    """True when the tokenizer's normalizer turns Hangul syllables into conjoining jamo: the lowercase/strip-accents
    path of BERT's normalizer goes through NFD, which is what a `BertTokenizer` does when its tokenizer_config
    leaves out `do_lower_case: false`."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    normalizer = getattr(backend, "normalizer", None)
    if normalizer is None:
        return False
    return any(_is_conjoining_jamo(char) for char in normalizer.normalize_str(_HANGUL_PROBE))


def _vocabulary_holds_syllables(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the vocabulary spells Hangul as syllables (every Korean encoder's) rather than as jamo (an NFD
    vocabulary such as multilingual BERT uncased, for which splitting is right)."""
    syllables = jamo = 0
    for token in tokenizer.get_vocab():
        syllables += any(_is_syllable(char) for char in token)
        jamo += any(_is_conjoining_jamo(char) for char in token)
    return syllables > jamo


def _vocabulary_is_cased(tokenizer: PreTrainedTokenizerBase) -> bool:
    return any(
        any("A" <= char <= "Z" for char in token) for token in tokenizer.get_vocab() if not token.startswith("[")
    )


def hangul_fix(tokenizer: PreTrainedTokenizerBase) -> dict[str, bool]:
    """Tokenizer settings that stop a syllable vocabulary's normalizer from splitting Hangul into jamo (every
    syllable would become the unknown token); {} when nothing needs fixing. Lower-casing stays unless the
    vocabulary is cased."""
    if not splits_hangul(tokenizer) or not _vocabulary_holds_syllables(tokenizer):
        return {}
    fix = {"strip_accents": False}
    if _vocabulary_is_cased(tokenizer):
        fix["do_lower_case"] = False
    return fix


def unknown_token_rate(encoded: RowTable, tokenizer: PreTrainedTokenizerBase) -> tuple[float, int]:
    """(share of the unknown token among the non-special tokens of `encoded`, number of those tokens); counted in
    Arrow, without Python lists."""
    if tokenizer.unk_token_id is None or len(encoded) == 0:
        return 0.0, 0
    ids = pc.list_flatten(arrow_column(encoded, "input_ids"))
    special = pa.array(sorted(set(tokenizer.all_special_ids) - {tokenizer.unk_token_id}), type=ids.type)
    tokens = len(ids) - (pc.sum(pc.is_in(ids, value_set=special)).as_py() or 0)
    unknown = pc.sum(pc.equal(ids, tokenizer.unk_token_id)).as_py() or 0
    return unknown / max(tokens, 1), tokens


def unknown_rate_message(
    rate: float, tokens: int, tokenizer: PreTrainedTokenizerBase, limit: float = MAX_UNKNOWN_RATE
) -> str:
    """What a high unknown-token rate means, with its likely cause (and the key that lets a user past the stop)."""
    name = tokenizer.name_or_path or "the tokenizer"
    message = (
        f"{rate:.1%} of the {tokens} tokens encoded with {name} are its unknown token {tokenizer.unk_token} "
        f"(max_unknown_rate {limit:g}): the model would see little of the text. "
    )
    if _is_built_here(name):
        return message + (
            "Likely cause: this tokenizer was trained here on other texts, and knows only their "
            "characters (an offline backbone learns the run's training and test texts; a post_train.py "
            "folder the files it was given): train with this file as test_file, or post-train on it "
            "too; or raise max_unknown_rate if that is what you want"
        )
    if splits_hangul(tokenizer):
        return message + (
            "Likely cause: its normalizer splits Hangul syllables into jamo (NFD through lower-casing "
            "or accent stripping); set do_lower_case: false and strip_accents: false in its "
            "tokenizer_config.json"
        )
    return message + (
        "Likely cause: its vocabulary does not cover this text (not a Korean model?), or cleaning "
        "keeps characters it never saw; check model_name_or_path and the cleaning keys, or raise "
        "max_unknown_rate if that is what you want"
    )


_BUILT_HERE_FILES = (BACKBONE_SPEC_FILE, POST_TRAIN_FILE)  # an offline backbone's spec, a post-training summary


def _is_built_here(folder: str) -> bool:
    """A tokenizer folder this pipeline trained (an offline backbone or a post-training of one), not a hub model's."""
    return any(os.path.isfile(os.path.join(folder, name)) for name in _BUILT_HERE_FILES)


def add_marker_tokens(tokenizer: PreTrainedTokenizerBase) -> int:
    """Register the target markers as special tokens (never split); returns how many were new."""
    present = set(tokenizer.get_vocab())
    missing = [token for token in MARKER_TOKENS if token not in present]
    if not missing:
        return 0
    return tokenizer.add_special_tokens(
        {"additional_special_tokens": list(MARKER_TOKENS)}, replace_extra_special_tokens=False
    )


CHARS_PER_TOKEN_BOUND = 64  # far more than any real text needs: bounds the work (and memory) on a giant row


def _marked_text(text: str, begin: int, end: int) -> str:
    return f"{text[:begin]}{TARGET_START} {text[begin:end]} {TARGET_END}{text[end:]}"


def bounded(text: str, target: str | None, begin: int | None, end: int | None, input_format: _InputFormat, limit: int):
    """The row cut to at most `limit` characters before tokenizing (truncation would drop the rest anyway): the
    start of the text, or for `marker` a window around the target, whose span moves with it."""
    if target is not None and len(target) > limit:
        target = target[:limit]
    if len(text) <= limit:
        return text, target, begin, end
    if input_format != "marker" or begin is None:
        return text[:limit], target, begin, end
    start = begin if end - begin >= limit else max(0, min(begin - (limit - (end - begin)) // 2, len(text) - limit))
    return text[start : start + limit], target, begin - start, min(end, start + limit) - start


def segments(
    text: str, target: str | None, begin: int | None, end: int | None, input_format: _InputFormat
) -> tuple[str, str | None]:
    """The (segment A, segment B) a row is encoded as; a null target (or `text`) gives the text alone."""
    if target is None or input_format == "text":
        return text, None
    if input_format == "pair":
        return text, target
    if input_format == "marker":
        return _marked_text(text, begin, end), None
    if input_format == "prompt":
        return PROMPT_TEMPLATE.format(target=target), text
    raise ValueError(f"unknown input_format {input_format!r}; choose one of {', '.join(INPUT_FORMATS)}")


def tokenize_batch(
    batch: dict,
    tokenizer: PreTrainedTokenizerBase,
    input_format: _InputFormat,
    max_length: int,
    target_mask: bool = False,
    input_template: str = DEFAULT_INPUT_TEMPLATE,
    **tokenizer_kwargs,
) -> dict:
    """`datasets.map(batched=True)` function: input ids (unpadded), their `length` (and what `tokenizer_kwargs` ask
    for, e.g. offsets); with `target_mask`, a `target_mask` column marking the target's tokens (see
    `_target_token_mask`)."""
    if input_format == "instruction":
        return _tokenize_instructions(batch, tokenizer, input_template, max_length, **tokenizer_kwargs)
    rows = [
        bounded(text, target, begin, end, input_format, max_length * CHARS_PER_TOKEN_BOUND)
        for text, target, begin, end in zip(batch["text"], batch["target"], batch["target_begin"], batch["target_end"])
    ]
    pairs = [segments(*row, input_format) for row in rows]
    kwargs = dict(tokenizer_kwargs, return_offsets_mapping=True) if target_mask else tokenizer_kwargs
    masks: list = [None] * len(pairs)
    # The tokenizer takes either all pairs or all singles: encode the two groups apart and put rows back in order.
    with_b = [i for i, (_, b) in enumerate(pairs) if b is not None]
    without_b = [i for i, (_, b) in enumerate(pairs) if b is None]
    encoded: dict[str, list] = {}
    for indices, is_pair in ((with_b, True), (without_b, False)):
        if not indices:
            continue
        first = [pairs[i][0] for i in indices]
        second = [pairs[i][1] for i in indices] if is_pair else None
        # longest_first trims the longer segment (the text) first and never fails on a short one
        part = tokenizer(first, second, truncation="longest_first", max_length=max_length, **kwargs)
        for key, values in part.items():
            column = encoded.setdefault(key, [None] * len(pairs))
            for i, value in zip(indices, values):
                column[i] = value
        if target_mask:
            for j, i in enumerate(indices):
                masks[i] = _target_token_mask(
                    rows[i],
                    input_format,
                    tokenizer,
                    part["input_ids"][j],
                    part["offset_mapping"][j],
                    part.sequence_ids(j),
                )
    if input_format == "marker":
        _keep_marked_targets(rows, encoded, masks if target_mask else None, tokenizer, max_length, kwargs)
    if target_mask:
        encoded["target_mask"] = masks
        if not tokenizer_kwargs.get("return_offsets_mapping"):
            del encoded["offset_mapping"]
    encoded["length"] = [len(ids) for ids in encoded["input_ids"]]
    return encoded


def _keep_marked_targets(
    rows: list[tuple],
    encoded: dict,
    masks: list | None,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    kwargs: dict,
) -> None:
    """Re-encode, as the window around the target, each marked row whose truncation cut the target off (and its
    target mask, when `masks` is given)."""
    end_id = tokenizer.convert_tokens_to_ids(TARGET_END)
    for i, (text, target, begin, end) in enumerate(rows):
        if target is None or end_id in encoded["input_ids"][i]:
            continue
        window = _target_window(_marked_text(text, begin, end), tokenizer, max_length)
        part = tokenizer(window, truncation=True, max_length=max_length, **kwargs)
        for key, value in part.items():
            encoded[key][i] = value
        if masks is not None:
            masks[i] = _target_token_mask(
                rows[i], "marker", tokenizer, part["input_ids"], part["offset_mapping"], part.sequence_ids()
            )


def _tokenize_instructions(
    batch: dict, tokenizer: PreTrainedTokenizerBase, template: str, max_length: int, **tokenizer_kwargs
) -> dict:
    """Each row as `template` filled in, the text cut (at a token boundary) so that the whole instruction fits
    `max_length`: truncating the filled string would cut off what follows the text, the question the last token
    must have read."""
    texts = [
        _fit_instruction(template, text, target, tokenizer, max_length)
        for text, target in zip(batch["text"], batch["target"])
    ]
    encoded = dict(tokenizer(texts, truncation=True, max_length=max_length, **tokenizer_kwargs))
    encoded["length"] = [len(ids) for ids in encoded["input_ids"]]
    return encoded


def fill_template(template: str, text: str, target: str | None) -> str:
    return template.replace("{target}", NO_TARGET if target is None else target).replace("{text}", text)


def _fit_instruction(
    template: str, text: str, target: str | None, tokenizer: PreTrainedTokenizerBase, max_length: int
) -> str:
    text = text[: max_length * CHARS_PER_TOKEN_BOUND]
    filled = fill_template(template, text, target)
    if len(tokenizer(filled)["input_ids"]) <= max_length:
        return filled
    rest = len(tokenizer(fill_template(template, "", target))["input_ids"])
    budget = max(1, max_length - rest - 2)  # 2: slack for a word cut at the seam
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return fill_template(template, text[: offsets[min(budget, len(offsets)) - 1][1]], target)


def _target_token_mask(
    row: tuple,
    input_format: _InputFormat,
    tokenizer: PreTrainedTokenizerBase,
    ids: list[int],
    offsets: list[tuple[int, int]],
    sequence_ids: list[int | None],
) -> list[int]:
    """1 for the target's tokens of one encoded row, else 0. `pair` and `prompt`: the text's tokens whose character
    offsets overlap the target's span (if truncation cut the span off, the target as the other segment spells it);
    `marker`: the tokens between the two markers. A row without a target (or with `text`) marks the whole text."""
    text, target, begin, end = row
    text_segment = 1 if input_format == "prompt" and target is not None else 0

    def overlapping(segment: int, start: int, stop: int) -> list[int]:
        return [int(seq == segment and a < stop and b > start and b > a) for seq, (a, b) in zip(sequence_ids, offsets)]

    chosen: list[int] = []
    if target is not None and input_format == "marker":
        start_id, end_id = tokenizer.convert_tokens_to_ids([TARGET_START, TARGET_END])
        if start_id in ids and end_id in ids:
            first, last = ids.index(start_id), ids.index(end_id)
            chosen = [int(first < k < last) for k in range(len(ids))]
    elif target is not None and input_format in ("pair", "prompt"):
        chosen = overlapping(text_segment, begin, end)
        if not any(chosen) and input_format == "pair":
            chosen = [int(seq == 1) for seq in sequence_ids]
        elif not any(chosen):
            place = PROMPT_TEMPLATE.index("{target}")
            chosen = overlapping(0, place, place + len(target))
    if not any(chosen):
        chosen = [int(seq == text_segment) for seq in sequence_ids]
    return chosen


def _target_window(marked: str, tokenizer: PreTrainedTokenizerBase, max_length: int) -> str:
    """The part of a marked text that fits `max_length` tokens with both markers in it: the target with as much
    context on each side as fits (more on the side that has it), cut at token boundaries. Truncating from the
    end instead would drop a late target's markers, and the model would not know what it is asked about."""
    full = tokenizer(marked, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = full["input_ids"], full["offset_mapping"]
    start_id, end_id = tokenizer.convert_tokens_to_ids([TARGET_START, TARGET_END])
    first, last = ids.index(start_id), len(ids) - 1 - ids[::-1].index(end_id)
    budget = max(1, max_length - tokenizer.num_special_tokens_to_add(pair=False) - 2)  # 2: slack for a cut word
    if last - first + 1 >= budget:
        left = first
    else:
        left = min(max(0, first - (budget - (last - first + 1)) // 2), max(0, len(ids) - budget))
    right = min(len(ids), left + budget)
    return marked[offsets[left][0] : offsets[right - 1][1]]
