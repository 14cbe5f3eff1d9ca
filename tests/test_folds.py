"""K-fold splits: deterministic for a seed, a partition of the rows, stratified per label."""

import numpy as np
import pytest

from nikl_emotion.training.folds import hold_out, make_folds


def random_labels(n=600, seed=0):
    rng = np.random.default_rng(seed)
    p = np.array([0.56, 0.24, 0.08, 0.08, 0.05, 0.02, 0.05, 0.06])
    labels = rng.random((n, 8)) < p
    labels[~labels.any(axis=1), 0] = True
    return labels.astype(int)


def test_same_seed_same_folds_other_seed_other_folds():
    labels = random_labels()
    a, b = make_folds(labels, 5, seed=42), make_folds(labels, 5, seed=42)
    assert all(np.array_equal(x[1], y[1]) for x, y in zip(a, b))
    c = make_folds(labels, 5, seed=7)
    assert not all(np.array_equal(x[1], y[1]) for x, y in zip(a, c))


def test_folds_partition_the_rows():
    labels = random_labels()
    folds = make_folds(labels, 5, seed=1)
    validation = np.concatenate([val for _, val in folds])
    assert sorted(validation.tolist()) == list(range(len(labels)))
    for train, val in folds:
        assert not set(train) & set(val) and len(train) + len(val) == len(labels)


def test_each_fold_keeps_label_proportions():
    labels = random_labels(n=2000)
    overall = labels.mean(axis=0)
    for _, val in make_folds(labels, 5, seed=3):
        # iterative stratification: every label's rate within 2 points of the whole (fear is 2% of rows)
        assert np.abs(labels[val].mean(axis=0) - overall).max() < 0.02


def test_too_few_rows_is_an_error():
    with pytest.raises(ValueError, match="cannot be split"):
        make_folds(random_labels(n=3), 5, seed=0)


def test_the_early_stopping_share_is_held_out_of_the_training_rows_stratified_and_seeded():
    labels = random_labels(n=2000)
    train, val = make_folds(labels, 5, seed=3)[0]
    kept, held = hold_out(train, labels, 0.1, seed=3)
    assert not set(kept) & set(held) and sorted([*kept, *held]) == sorted(train) and not set(held) & set(val)
    assert abs(len(held) / len(train) - 0.1) < 0.01  # iterative stratification: about the share
    assert np.abs(labels[held].mean(axis=0) - labels[train].mean(axis=0)).max() < 0.03
    again, _ = hold_out(train, labels, 0.1, seed=3)
    other, _ = hold_out(train, labels, 0.1, seed=4)
    assert np.array_equal(kept, again) and not np.array_equal(kept, other)
