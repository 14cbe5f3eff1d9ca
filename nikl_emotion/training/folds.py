"""Seeded multi-label stratified K-fold splits (iterative stratification)."""

from __future__ import annotations

import numpy as np
from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

__all__ = [
    "make_folds",
]


def make_folds(labels: np.ndarray, num_folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train indices, validation indices) per fold; the same labels and seed give the same folds on every rank."""
    labels = np.asarray(labels)
    if num_folds < 2:
        raise ValueError(f"num_folds must be at least 2, got {num_folds}")
    if len(labels) < num_folds:
        raise ValueError(f"{len(labels)} training rows cannot be split into {num_folds} folds")
    splitter = MultilabelStratifiedKFold(n_splits=num_folds, shuffle=True, random_state=seed)
    return [(np.sort(train), np.sort(val)) for train, val in splitter.split(np.zeros(len(labels)), labels)]
