"""Decision thresholds fitted on out-of-fold probabilities to maximise micro-F1.

Per-label thresholds are found by coordinate ascent over a grid (each label in turn, the others held fixed,
until no label changes), scoring every candidate with the empty-row fallback applied, since that is how the
thresholds will be used. The gain is measured without fitting on the scored rows: for each fold, thresholds are
fitted on the other folds' OOF rows and applied to that fold's OOF rows (`nested_gain`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from nikl_emotion.base.errors import PipelineError
from nikl_emotion.base.fileio import write_json_atomic
from nikl_emotion.base.labels import LABELS, NUM_LABELS
from nikl_emotion.decisions.metrics import decide

__all__ = [
    "DEFAULT_GRID",
    "micro_f1",
    "fit_global_threshold",
    "fit_thresholds",
    "FittedThresholds",
    "nested_thresholds",
    "nested_gain",
    "describe_gain",
    "save_thresholds",
    "load_thresholds",
]


DEFAULT_GRID = np.round(np.arange(0.05, 0.951, 0.01), 2)


def micro_f1(gold: np.ndarray, pred: np.ndarray) -> float:
    """`metrics.score(...)["micro_f1"]` for boolean matrices, without sklearn's per-call overhead (the search
    scores thousands of candidates)."""
    tp = np.count_nonzero(gold & pred)
    denominator = np.count_nonzero(gold) + np.count_nonzero(pred)
    return 2.0 * tp / denominator if denominator else 0.0


def fit_global_threshold(
    probs: np.ndarray, gold: np.ndarray, grid: np.ndarray = DEFAULT_GRID, fallback: bool = True
) -> float:
    gold = np.asarray(gold).astype(bool)
    scores = [micro_f1(gold, decide(probs, t, fallback)) for t in grid]
    return float(grid[int(np.argmax(scores))])


def fit_thresholds(
    probs: np.ndarray,
    gold: np.ndarray,
    grid: np.ndarray = DEFAULT_GRID,
    fallback: bool = True,
    max_rounds: int = 5,
    start: float | None = None,
) -> np.ndarray:
    """One threshold per label maximising micro-F1 (with fallback), starting from `start` (default: the best
    global threshold)."""
    probs = np.asarray(probs, dtype=np.float64)
    gold = np.asarray(gold).astype(bool)
    if start is None:
        start = fit_global_threshold(probs, gold, grid, fallback)
    thresholds = np.full(NUM_LABELS, start)
    best = micro_f1(gold, decide(probs, thresholds, fallback))
    for _ in range(max_rounds):
        changed = False
        for label in range(NUM_LABELS):
            candidates = np.repeat(thresholds[None, :], len(grid), axis=0)
            candidates[:, label] = grid
            scores = np.array([micro_f1(gold, decide(probs, c, fallback)) for c in candidates])
            top = int(np.argmax(scores))  # first best: ties keep the lower threshold
            if scores[top] > best + 1e-12:
                best, thresholds = scores[top], candidates[top]
                changed = True
        if not changed:
            break
    return thresholds


@dataclass(frozen=True)
class FittedThresholds:
    """Per-label thresholds fitted on OOF rows: per fold on the other folds' rows only (`nested`, what decides that
    fold's rows in every nested estimate) and on every row (`all_rows`, the final rule's)."""

    nested: dict[int, np.ndarray]
    all_rows: np.ndarray


def nested_thresholds(
    probs: np.ndarray, gold: np.ndarray, fold_of_row: np.ndarray, fallback: bool = True
) -> dict[int, np.ndarray]:
    """{fold: per-label thresholds fitted on the other folds' OOF rows only}: what decides that fold's rows in
    every nested estimate."""
    probs = np.asarray(probs, dtype=np.float64)
    gold = np.asarray(gold).astype(bool)
    fitted = {}
    for fold in np.unique(fold_of_row):
        others = fold_of_row != fold
        fitted[int(fold)] = fit_thresholds(probs[others], gold[others], fallback=fallback)
    return fitted


def nested_gain(
    probs: np.ndarray,
    gold: np.ndarray,
    fold_of_row: np.ndarray,
    fallback: bool = True,
    default: float = 0.5,
    fitted: dict[int, np.ndarray] | None = None,
) -> dict:
    """micro-F1 of the OOF rows at `default` vs with thresholds fitted on the other folds only (`fitted`, from
    `nested_thresholds`, when already computed)."""
    probs = np.asarray(probs, dtype=np.float64)
    gold = np.asarray(gold).astype(bool)
    fitted = fitted if fitted is not None else nested_thresholds(probs, gold, fold_of_row, fallback)
    tuned = np.zeros_like(gold)
    for fold, thresholds in fitted.items():
        held_out = fold_of_row == fold
        tuned[held_out] = decide(probs[held_out], thresholds, fallback)
    return {
        "micro_f1_at_default": micro_f1(gold, decide(probs, default, fallback)),
        "micro_f1_tuned_nested": micro_f1(gold, tuned),
        "default_threshold": default,
    }


def describe_gain(evaluation: dict) -> str:
    """One line for the console: OOF micro-F1 at the default threshold vs with nested-fitted thresholds."""
    return (
        f"OOF micro-F1 at {evaluation['default_threshold']}: {evaluation['micro_f1_at_default']:.4f}; with per-label "
        f"thresholds fitted on the other folds: {evaluation['micro_f1_tuned_nested']:.4f} "
        "(thresholds.json holds the ones fitted on all OOF rows)"
    )


def save_thresholds(path: str, per_label: np.ndarray, global_threshold: float, evaluation: dict | None = None) -> None:
    write_json_atomic(
        path,
        {
            "per_label": {label: float(t) for label, t in zip(LABELS, per_label)},
            "global": float(global_threshold),
            "fitted_on": "out-of-fold probabilities",
            **({"evaluation": evaluation} if evaluation else {}),
        },
    )


def load_thresholds(path: str, which: str = "per_label") -> np.ndarray:
    """The 8 thresholds from a thresholds.json (`which`: per_label or global)."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError, RecursionError) as exc:
        raise PipelineError(f"{path}: cannot read thresholds ({exc})") from None
    if not isinstance(data, dict):
        raise PipelineError(f"{path}: expected a JSON object with per_label (and global) thresholds")
    if which == "global":
        value = data.get("global")
        if not _is_threshold(value):
            raise PipelineError(f"{path}: global: expected a number in (0, 1)")
        return np.full(NUM_LABELS, float(value))
    per_label = data.get("per_label")
    if not isinstance(per_label, dict) or list(per_label) != list(LABELS):
        raise PipelineError(f"{path}: per_label: expected the keys {', '.join(LABELS)} in order")
    bad = next((label for label in LABELS if not _is_threshold(per_label[label])), None)
    if bad is not None:
        raise PipelineError(f"{path}: per_label.{bad}: thresholds must be in (0, 1), got {per_label[bad]!r}")
    return np.array([per_label[label] for label in LABELS], dtype=np.float64)


def _is_threshold(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1
