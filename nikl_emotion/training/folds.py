"""Seeded multi-label stratified K-fold splits (iterative stratification)."""

from __future__ import annotations

import numpy as np
from iterstrat.ml_stratifiers import MultilabelStratifiedKFold, MultilabelStratifiedShuffleSplit

__all__ = [
    "make_folds",
    "hold_out",
    "choosing_rows",
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


def hold_out(train_index: np.ndarray, labels: np.ndarray, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`train_index` split into (rows to train on, about `share` of them held out: iterative stratification on
    their `labels` rows puts a few rows more or less); the same inputs give the same split on every rank."""
    train_index = np.asarray(train_index)
    held = max(1, round(len(train_index) * share))
    if len(train_index) - held < 1:
        raise ValueError(f"{len(train_index)} training rows leave none to train on after holding out {held}")
    splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=held, random_state=seed)
    kept, out = next(splitter.split(np.zeros(len(train_index)), np.asarray(labels)[train_index]))
    return np.sort(train_index[kept]), np.sort(train_index[out])


def choosing_rows(
    folds: list[tuple[np.ndarray, np.ndarray]], k: int, labels: np.ndarray, share: float, seed: int
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Fold k's (rows to train on, rows that choose the epoch or a search's trial, whether those were held out of
    the training rows). `share` 0 chooses on the fold's validation rows (its out-of-fold rows then saw the choice);
    above 0 a stratified `share` of the training rows, seeded by the run's `seed` + k, is held out to choose on
    (`early_stopping_split`), so the validation rows stay unseen."""
    train_index, val_index = folds[k]
    if share <= 0:
        return train_index, val_index, False
    kept, held = hold_out(train_index, labels, share, seed + k)
    return kept, held, True
