"""Diverged training is stopped, not recorded: a non-finite training or validation loss (or non-finite predicted
probabilities) ends the fold with one line naming the fold, the step and the likely cause, before anything marks
it done."""

from __future__ import annotations

import math

import numpy as np
from transformers import TrainerCallback

from nikl_emotion.base.errors import PipelineError

__all__ = [
    "TrainingDiverged",
    "likely_cause",
    "diverged",
    "DivergenceGuard",
    "check_finite_probabilities",
]


_WATCHED = ("loss", "eval_loss")  # the training loss of a logging window, the validation loss of an evaluation


class TrainingDiverged(PipelineError):
    """A fold's training produced non-finite values; its checkpoints are worthless."""


def likely_cause(learning_rate: float, adversarial: str = "none", adversarial_epsilon: float | None = None) -> str:
    cause = f"learning_rate {learning_rate:g} too high"
    if adversarial != "none":
        epsilon = "its default" if adversarial_epsilon is None else f"{adversarial_epsilon:g}"
        cause += f", or adversarial {adversarial} with adversarial_epsilon {epsilon} too large"
    return cause


def diverged(fold: int, step: int, what: str, cause: str) -> TrainingDiverged:
    return TrainingDiverged(
        f"fold {fold}: training diverged by step {step} ({what}); likely cause: {cause}. The "
        "fold is not marked done and its checkpoints were removed: correct the setting and run "
        "the command again"
    )


class DivergenceGuard(TrainerCallback):
    """Stops training as soon as a logged training or validation loss is NaN or infinite, and keeps the failure
    (`failure`) for the caller to raise once the Trainer has closed its progress bars. The logged values are already
    gathered over processes, so every process stops at the same step."""

    def __init__(self, fold: int, cause: str):
        self.fold = fold
        self.cause = cause
        self.failure: TrainingDiverged | None = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.check(state, control, logs or {})

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.check(state, control, metrics or {})

    def check(self, state, control, values: dict) -> None:
        for key, value in values.items():
            if (
                self.failure is None
                and key in _WATCHED
                and isinstance(value, (int, float))
                and not math.isfinite(value)
            ):
                self.failure = diverged(self.fold, state.global_step, f"{key} {value}", self.cause)
        if self.failure is not None:
            control.should_training_stop = True
            control.should_save = False  # a diverged model is not worth a checkpoint

    def raise_if_diverged(self) -> None:
        if self.failure is not None:
            raise self.failure


def check_finite_probabilities(fold: int, step: int, cause: str, **named: np.ndarray | None) -> None:
    """The fold's predicted probabilities (validation, test) must all be finite before they are written."""
    for name, probs in named.items():
        if probs is not None and not np.isfinite(probs).all():
            bad = int((~np.isfinite(probs)).any(axis=1).sum())
            raise diverged(fold, step, f"{bad} {name} rows with non-finite probabilities", cause)
