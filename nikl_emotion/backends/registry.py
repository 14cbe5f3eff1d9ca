"""The backends, in the order they claim a `model_name_or_path`: the n-gram member (`ngram:...`), then the encoder,
which takes every other name (a hub model, a local folder, `offline:...`). A new backend (e.g. a decoder with LoRA)
is one module implementing `fold_backend.FoldBackend`, listed here before the encoder."""

from __future__ import annotations

from nikl_emotion.backends.encoder_backend import EncoderBackend
from nikl_emotion.backends.fold_backend import FoldBackend
from nikl_emotion.backends.ngram import NgramFoldBackend

BACKENDS: tuple[FoldBackend, ...] = (NgramFoldBackend(), EncoderBackend())


def backend_for(model_name_or_path: str) -> FoldBackend:
    """The backend that trains `model_name_or_path`."""
    return next(backend for backend in BACKENDS if backend.matches(model_name_or_path))
