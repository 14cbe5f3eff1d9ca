"""The backends, in the order they claim a `model_name_or_path`: the n-gram member (`ngram:...`), the decoder (a
causal LM's config), backends added with `register_backend`, then the encoder, which takes every other name (a hub
model, a local folder, `offline:...`). A new backend is one module implementing `fold_backend.FoldBackend`, passed
to `register_backend` (as heads are to `heads.register_head`)."""

from __future__ import annotations

import logging
import os

from nikl_emotion.backends.classifier import CheckpointClassifier
from nikl_emotion.backends.decoder_backend import DecoderBackend
from nikl_emotion.backends.encoder_backend import EncoderBackend
from nikl_emotion.backends.fold_backend import FoldBackend
from nikl_emotion.backends.ngram import NgramBackend
from nikl_emotion.backends.precision import LoadOptions
from nikl_emotion.base.errors import PipelineError
from nikl_emotion.base.registries import check_own_name

logger = logging.getLogger(__name__)

__all__ = [
    "BACKENDS",
    "register_backend",
    "backend_for",
    "offered",
    "checkpoint_backend",
    "load_checkpoint",
]


BACKENDS: list[FoldBackend] = [NgramBackend(), DecoderBackend(), EncoderBackend()]


def register_backend(backend: FoldBackend) -> FoldBackend:
    """Add a backend under its name (unique), before the encoder, which claims every name no other backend matches
    (and the checkpoints no other backend owns); returns it."""
    if not isinstance(backend, FoldBackend):
        raise TypeError(f"a backend subclasses backends.fold_backend.FoldBackend, got {type(backend).__name__}")
    check_own_name(backend.name, [other.name for other in BACKENDS], "backend")
    BACKENDS.insert(len(BACKENDS) - 1, backend)
    return backend


def backend_for(model_name_or_path: str) -> FoldBackend:
    """The backend that trains `model_name_or_path`."""
    return next(backend for backend in BACKENDS if backend.matches(model_name_or_path))


def offered(backend: FoldBackend, ability: str, refusal: str):
    """What `backend` offers for a program (`backend.<ability>()`: its search trials, post-trainer, student, ONNX
    exporter), or the program's refusal: `refusal` with `{backend}` standing for the backend's name."""
    thing = getattr(backend, ability)()
    if thing is None:
        raise PipelineError(refusal.replace("{backend}", backend.name))  # not format(): a path may hold braces
    return thing


def checkpoint_backend(folder: str) -> FoldBackend:
    """The backend that saved the checkpoint folder `folder`."""
    if not os.path.isdir(folder):
        raise PipelineError(f"{folder}: checkpoint folder not found")
    return next(backend for backend in BACKENDS if backend.owns_checkpoint(folder))


def load_checkpoint(
    folder: str | os.PathLike, *, device=None, threads: int | None = None, options: LoadOptions | None = None
) -> CheckpointClassifier:
    """Any backend's checkpoint folder (or an encoder's ONNX export) as a `CheckpointClassifier`, loaded with
    `options` (precision.LoadOptions: dtype, 4-bit, remote code; default: as its run trained)."""
    folder, options = os.fspath(folder), options or LoadOptions()
    loaded = checkpoint_backend(folder).load_checkpoint(folder, device=device, threads=threads, options=options)
    if options.dtype != "auto" and (loaded.reads_text or loaded.is_onnx):
        # said, not refused: a stack's n-gram member beside neural ones is served with --dtype for those
        held = (
            "an n-gram model (no weights in a dtype)" if loaded.reads_text else "an ONNX export (float32 as exported)"
        )
        logger.warning("%s: --dtype %s does not apply to %s; ignored for it", folder, options.dtype, held)
    return loaded
