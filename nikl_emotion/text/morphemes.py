"""Korean morpheme analysis with kiwipiepy (its model ships on the package index, so it works offline).

Two uses: `segment_batch` inserts a space at every morpheme boundary inside a word, so a subword tokenizer trained
on the result learns morpheme-aware pieces (Park et al. 2020: morphological segmentation then subwords was the
best Korean tokenization on KorNLI, KorSTS, NSMC and PAWS-X); the text's own characters are kept (only spaces are
added), so target spans map through exactly. `morpheme_strings` gives "form/TAG" tokens for the n-gram member.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

from nikl_emotion.base.errors import PipelineError
from nikl_emotion.text.cleaning import Edit, Span, substitute

__all__ = [
    "kiwi",
    "morpheme_strings",
    "segment_batch",
]


_KIWI_REQUIREMENT = "kiwipiepy==0.24.1"
_CACHE_LIMIT = 500_000  # texts whose analysis is kept per process: a K-fold loop analyses each text once


@functools.cache
def kiwi():
    """One analyser per process (loading its model takes ~1 s)."""
    try:
        from kiwipiepy import Kiwi
    except ImportError:
        raise PipelineError(f"morpheme analysis needs kiwipiepy: pip install {_KIWI_REQUIREMENT}") from None
    return Kiwi(num_workers=min(os.cpu_count() or 1, 8))


_TOKENS: dict[str, list[tuple[str, str, int, int]]] = {}


def _analyse(texts: Sequence[str]) -> list[list[tuple[str, str, int, int]]]:
    """(form, tag, start, length) of each text's morphemes; texts seen before in this process are not analysed
    again."""
    todo = list(dict.fromkeys(text for text in texts if text not in _TOKENS))
    if todo:
        if len(_TOKENS) + len(todo) > _CACHE_LIMIT:
            _TOKENS.clear()
        for text, tokens in zip(todo, kiwi().tokenize(todo)):
            _TOKENS[text] = [(token.form, token.tag, token.start, token.len) for token in tokens]
    return [_TOKENS[text] for text in texts]


def morpheme_strings(texts: Sequence[str]) -> list[str]:
    """Each text as space-separated `form/TAG` morphemes (`좋/VA 어요/EF`), for word n-gram features."""
    return [" ".join(f"{form}/{tag}" for form, tag, _, _ in tokens) for tokens in _analyse(texts)]


def _boundary_edits(text: str, tokens: list[tuple[str, str, int, int]]) -> list[Edit]:
    """Space insertions at the morpheme boundaries that have no space yet (inside words and between a word and
    its punctuation); a contracted syllable (했 = 하 + 었, 겼 in 생기 + 었) holds two morphemes and gets no
    boundary inside it."""
    positions = {position for _, _, start, length in tokens for position in (start, start + length)}
    # a morpheme whose form spans a contraction (생기 in 생겼) makes the positions inside it no boundary
    inside = {position for _, _, start, length in tokens for position in range(start + 1, start + length)}
    return [
        (position, position, " ")
        for position in sorted(positions - inside)
        if 0 < position < len(text) and not text[position - 1].isspace() and not text[position].isspace()
    ]


def _segment_text(text: str, span: Span | None, tokens: list[tuple[str, str, int, int]]) -> tuple[str, Span | None]:
    text, span = substitute(text, span, _boundary_edits(text, tokens))
    if span is not None:  # an insertion at the span's start leaves the span on the new space
        begin, end = span
        while begin < end and text[begin].isspace():
            begin += 1
        span = (begin, end)
    return text, span


def segment_batch(batch: dict) -> dict:
    """`datasets.map(batched=True)` function: texts segmented into morphemes, target spans moved with them, and
    each target form segmented on its own (the form the pair and prompt encodings read)."""
    texts, targets, begins, ends = [], [], [], []
    forms = [target for target in batch["target"] if target is not None]
    analysed = _analyse(list(batch["text"]) + forms)
    segmented_forms = iter(
        _segment_text(form, None, tokens)[0] for form, tokens in zip(forms, analysed[len(batch["text"]) :])
    )
    for text, tokens, target, begin, end in zip(
        batch["text"], analysed, batch["target"], batch["target_begin"], batch["target_end"]
    ):
        text, span = _segment_text(text, None if target is None else (begin, end), tokens)
        texts.append(text)
        targets.append(None if target is None else next(segmented_forms))
        begins.append(None if span is None else span[0]), ends.append(None if span is None else span[1])
    return {"text": texts, "target": targets, "target_begin": begins, "target_end": ends}
