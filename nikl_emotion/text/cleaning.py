"""Text cleaning that keeps the target span aligned.

Every step is a set of non-overlapping substitutions (regex matches or emoji spans). Applying them through
`substitute` rewrites the text and maps the target's offsets through the same edits, so the span is recomputed
rather than left pointing at the old offsets.

Any cleaning first composes the text to NFC (decomposed Hangul would otherwise be erased as symbols). The symbol
cleansing is the KcBERT/KcELECTRA recipe the reference pipeline used: keep Hangul, jamo, ASCII and
` .,?!/@$%~％·∼()`; drop emoji and URLs; collapse a character repeated 3+ times to 2 (soynlp's `repeat_normalize`,
whose regex is reproduced here); squeeze spaces.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

import emoji

__all__ = [
    "Span",
    "Edit",
    "CleaningOptions",
    "substitute",
    "clean_text",
    "clean_batch",
]


Span = tuple[int, int]
Edit = tuple[int, int, str]  # replace text[start:end] with the string

_OTHERS_PATTERN = re.compile(r"&others&")
_PLACEHOLDER_PATTERN = re.compile(r"&[A-Za-z]+\d*&")
_SYMBOL_PATTERN = re.compile(r"[^ .,?!/@$%~％·∼()\x00-\x7Fㄱ-ㅣ가-힣]+")
_URL_PATTERN = re.compile(
    r"https?:\/\/(www\.)?[-a-zA-Z0-9@:%._\+~#=]{1,256}\.[a-zA-Z0-9()]{1,6}\b([-a-zA-Z0-9()@:%_\+.~#?&//=]*)"
)
_REPEAT_PATTERN = re.compile(r"(\w)\1{2,}")  # soynlp.normalizer.repeat_normalize, num_repeats=2
_MULTI_SPACE_PATTERN = re.compile(r"\s{2,}|[^\S ]")  # soynlp's `\s+ -> " "`, without no-op edits
_EDGE_SPACE_PATTERN = re.compile(r"^\s+|\s+$")


@dataclass(frozen=True)
class CleaningOptions:
    remove_others: bool = True
    remove_placeholders: bool = False
    cleanse: bool = True
    remove_emoji: bool = False

    @property
    def any(self) -> bool:
        return self.remove_others or self.remove_placeholders or self.cleanse or self.remove_emoji


def _regex_edits(pattern: re.Pattern, text: str, replacement: str) -> list[Edit]:
    return [(m.start(), m.end(), m.expand(replacement)) for m in pattern.finditer(text)]


# every non-ASCII character of the emoji `emoji.emoji_list` finds (each emoji has one; tests/test_cleaning.py checks)
_EMOJI_CHARACTERS = frozenset(char for known in emoji.EMOJI_DATA for char in known if not char.isascii())


def _emoji_edits(text: str, replacement: str) -> list[Edit]:
    if _EMOJI_CHARACTERS.isdisjoint(text):  # most texts, and all after symbol cleansing: skip emoji_list's slow scan
        return []
    return [(e["match_start"], e["match_end"], replacement) for e in emoji.emoji_list(text)]


def _map_offset(offset: int, edits: Iterable[Edit], is_end: bool) -> int:
    """Where `offset` lands after the edits; an offset inside an edited run snaps to that run's replacement."""
    shift = 0
    for start, end, replacement in edits:
        if end <= offset and not (start == end == offset):
            shift += len(replacement) - (end - start)
        elif start < offset < end:
            new_start = start + shift
            return new_start + len(replacement) if is_end else new_start
        elif start >= offset:
            break
    return offset + shift


def substitute(text: str, span: Span | None, edits: list[Edit]) -> tuple[str, Span | None]:
    if not edits:
        return text, span
    pieces, cursor = [], 0
    for start, end, replacement in edits:
        pieces.append(text[cursor:start])
        pieces.append(replacement)
        cursor = end
    pieces.append(text[cursor:])
    if span is not None:
        span = (_map_offset(span[0], edits, is_end=False), _map_offset(span[1], edits, is_end=True))
    return "".join(pieces), span


def _is_non_starter(char: str) -> bool:
    # combining marks, and the vowel/final jamo that NFC composes onto a preceding initial jamo
    return unicodedata.combining(char) != 0 or "\u1160" <= char <= "\u11ff"


def _nfc_edits(text: str) -> list[Edit]:
    """NFC composition as span-preserving edits, one per character cluster that changes. NFD-normalised Hangul
    (macOS file names, some exports) is a run of conjoining jamo that the symbol cleansing would erase whole."""
    if unicodedata.is_normalized("NFC", text):
        return []
    edits, start = [], 0
    while start < len(text):
        end = start + 1
        while end < len(text) and _is_non_starter(text[end]):
            end += 1
        composed = unicodedata.normalize("NFC", text[start:end])
        if composed != text[start:end]:
            edits.append((start, end, composed))
        start = end
    return edits


def _regex_step(pattern: re.Pattern, replacement: str):
    return lambda text: _regex_edits(pattern, text, replacement)


def _steps(options: CleaningOptions) -> list:
    steps = [_nfc_edits] if options.any else []
    if options.remove_placeholders:
        steps.append(_regex_step(_PLACEHOLDER_PATTERN, ""))
    elif options.remove_others:
        steps.append(_regex_step(_OTHERS_PATTERN, ""))
    if options.cleanse:
        # the order of KcBERT's `clean`: symbols -> emoji -> URLs -> strip -> repeat_normalize (repeats, spaces, strip)
        steps += [
            _regex_step(_SYMBOL_PATTERN, " "),
            lambda text: _emoji_edits(text, ""),
            _regex_step(_URL_PATTERN, ""),
            _regex_step(_REPEAT_PATTERN, r"\1\1"),
        ]
    elif options.remove_emoji:
        steps.append(lambda text: _emoji_edits(text, ""))
    if options.any:
        steps += [_regex_step(_MULTI_SPACE_PATTERN, " "), _regex_step(_EDGE_SPACE_PATTERN, "")]
    return steps


def clean_text(text: str, span: Span | None, options: CleaningOptions) -> tuple[str, Span | None]:
    """Clean `text` and carry the target `span` (begin, end) through every edit.

    The returned span never starts or ends on a space. It can be empty when the cleaning removed the whole
    target (e.g. a target made of emoji); callers then keep the target's position with no characters.
    """
    for step in _steps(options):
        text, span = substitute(text, span, step(text))
    if span is not None:
        begin, end = span
        while begin < end and text[begin].isspace():
            begin += 1
        while end > begin and text[end - 1].isspace():
            end -= 1
        span = (begin, end)
    return text, span


def clean_batch(batch: dict, options: CleaningOptions) -> dict:
    """`datasets.map(batched=True)` function: cleans `text` and recomputes `target`, `target_begin`, `target_end`.

    A target that cleaning emptied keeps its original form (pair and prompt encodings still see the word) and an
    empty span at its new position (the marker encoding still marks where it was).
    """
    texts, targets, begins, ends = [], [], [], []
    for text, target, begin, end in zip(batch["text"], batch["target"], batch["target_begin"], batch["target_end"]):
        span = None if target is None else (begin, end)
        new_text, new_span = clean_text(text, span, options)
        texts.append(new_text)
        if new_span is None:
            targets.append(None), begins.append(None), ends.append(None)
            continue
        new_form = new_text[new_span[0] : new_span[1]]
        targets.append(new_form if new_form else target)
        begins.append(new_span[0])
        ends.append(new_span[1])
    return {"text": texts, "target": targets, "target_begin": begins, "target_end": ends}
