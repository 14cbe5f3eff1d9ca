"""Target-aware input encodings, tokenized in a batched `map` without padding (padding happens per batch)."""

from __future__ import annotations

from typing import Literal

from transformers import PreTrainedTokenizerBase

InputFormat = Literal["pair", "marker", "prompt"]
INPUT_FORMATS: tuple[str, ...] = ("pair", "marker", "prompt")

TARGET_START = "[TGT]"
TARGET_END = "[/TGT]"
MARKER_TOKENS: tuple[str, str] = (TARGET_START, TARGET_END)
PROMPT_TEMPLATE = "{target}에 대해 어떤 감정이 드러나나요?"


def add_marker_tokens(tokenizer: PreTrainedTokenizerBase) -> int:
    """Register the target markers as special tokens (never split); returns how many were new."""
    present = set(tokenizer.get_vocab())
    missing = [token for token in MARKER_TOKENS if token not in present]
    if not missing:
        return 0
    return tokenizer.add_special_tokens({"additional_special_tokens": list(MARKER_TOKENS)}, replace_extra_special_tokens=False)


def segments(text: str, target: str | None, begin: int | None, end: int | None, input_format: InputFormat) -> tuple[str, str | None]:
    """The (segment A, segment B) a row is encoded as; a null target gives the text alone."""
    if target is None:
        return text, None
    if input_format == "pair":
        return text, target
    if input_format == "marker":
        return f"{text[:begin]}{TARGET_START} {text[begin:end]} {TARGET_END}{text[end:]}", None
    if input_format == "prompt":
        return PROMPT_TEMPLATE.format(target=target), text
    raise ValueError(f"unknown input_format {input_format!r}; choose one of {', '.join(INPUT_FORMATS)}")


def tokenize_batch(
    batch: dict, tokenizer: PreTrainedTokenizerBase, input_format: InputFormat, max_length: int, **tokenizer_kwargs
) -> dict:
    """`datasets.map(batched=True)` function: input ids (unpadded), their `length` (and what `tokenizer_kwargs` ask
    for, e.g. offsets)."""
    pairs = [
        segments(text, target, begin, end, input_format)
        for text, target, begin, end in zip(batch["text"], batch["target"], batch["target_begin"], batch["target_end"])
    ]
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
        part = tokenizer(first, second, truncation="longest_first", max_length=max_length, **tokenizer_kwargs)
        for key, values in part.items():
            column = encoded.setdefault(key, [None] * len(pairs))
            for i, value in zip(indices, values):
                column[i] = value
    encoded["length"] = [len(ids) for ids in encoded["input_ids"]]
    return encoded
