"""Pseudo-labels (`pseudo_label_run: OUT`, Lee 2013): a finished run's confident test predictions become extra
training rows of a second run.

Fold K of the new run takes its pseudo-labels only from fold K of the finished run. That model never saw fold K's
validation rows, so no information from the rows fold K is scored on reaches its training set; pooling the other
folds' test predictions would carry their labels in. Hence the finished run must have the same training rows in the
same folds (same files, num_folds and seed); it is checked row by row.

A test row is kept when every label's probability is at least `threshold` or at most 1 - threshold and at least one
label is positive (every gold row has one); its labels are the probabilities rounded at 0.5.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from nikl_emotion.base.errors import PipelineError
from nikl_emotion.base.fileio import read_probs
from nikl_emotion.runs.finished_run import FinishedRun

__all__ = [
    "PseudoLabels",
    "check_pseudo_label_run",
    "teacher_test_file",
    "confident",
    "fold_pseudo_labels",
]


@dataclass
class PseudoLabels:
    """One fold's pseudo-labelled rows: their ids in the finished run's test file and their 0/1 labels."""

    ids: list[str]
    labels: np.ndarray


def check_pseudo_label_run(run_dir: str) -> FinishedRun:
    """A finished train.py run with test predictions in every fold, and its test file unchanged since."""
    run = FinishedRun.open(run_dir, "pseudo_label_run", with_test=True)
    if not os.path.isfile(run.test_file):
        raise PipelineError(
            f"pseudo_label_run: {run_dir}'s test_file {run.test_file} is not found (paths are relative "
            "to where that run was started)"
        )
    if not run.test_file_unchanged():
        raise PipelineError(f"pseudo_label_run: {run.test_file} changed since {run_dir} predicted it")
    return run


def teacher_test_file(run_dir: str) -> str:
    return FinishedRun.open(run_dir, "pseudo_label_run", with_test=True).test_file


def confident(probs: np.ndarray, threshold: float) -> np.ndarray:
    """Rows whose every label is decided with probability >= threshold either way, with one positive label."""
    sure = ((probs >= threshold) | (probs <= 1 - threshold)).all(axis=1)
    return sure & (probs >= threshold).any(axis=1)


def fold_pseudo_labels(
    run_dir: str, train_ids: list[str], folds: list[tuple[np.ndarray, np.ndarray]], threshold: float
) -> list[PseudoLabels]:
    """Per fold, the finished run's fold-K confident test rows; refuses a run with other folds or test rows that are
    also training rows. (The settings' check, `check_pseudo_label_run`, already hashed its test file.)"""
    finished = FinishedRun.open(run_dir, "pseudo_label_run", with_test=True)
    run, num_folds = finished.folder, finished.num_folds
    if num_folds != len(folds):
        raise PipelineError(
            f"pseudo_label_run: {run_dir} has {num_folds} folds, this run {len(folds)}: the folds must "
            "be the same, or a fold's pseudo-labels would come from a model that saw its validation rows"
        )
    known = set(train_ids)
    result = []
    for k, (_, val_index) in enumerate(folds):
        teacher_val, _ = read_probs(run.fold(k).val_probs)
        if set(teacher_val) != {train_ids[i] for i in val_index}:
            raise PipelineError(
                f"pseudo_label_run: {run_dir}'s fold {k} validated on other rows than this run's fold "
                f"{k} (use the same training files, num_folds and seed): its test predictions would "
                "carry labels of this fold's validation rows"
            )
        ids, probs = read_probs(run.fold(k).test_probs)
        overlap = known.intersection(ids)
        if overlap:
            raise PipelineError(
                f"pseudo_label_run: {run_dir}'s test rows include training rows of this run "
                f"(e.g. id {sorted(overlap)[0]!r})"
            )
        keep = confident(probs, threshold)
        result.append(PseudoLabels([i for i, kept in zip(ids, keep) if kept], (probs[keep] >= 0.5).astype(np.float32)))
    return result
