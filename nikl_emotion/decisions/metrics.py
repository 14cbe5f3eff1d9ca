"""The official metric (micro-F1 over the N×8 binary matrix) and the decision rule from probabilities."""

from __future__ import annotations

import numpy as np

from nikl_emotion.base.labels import LABELS, NUM_LABELS

__all__ = [
    "decide",
    "sigmoid",
    "score",
    "format_table",
    "score_files",
]


def decide(probs: np.ndarray, threshold: float | np.ndarray = 0.5, fallback: bool = True) -> np.ndarray:
    """Labels at or above the threshold; a row left empty takes its top-scoring label (every gold row has one)."""
    probs = np.asarray(probs, dtype=np.float64)
    decisions = probs >= np.asarray(threshold)
    if fallback and len(probs):
        empty = ~decisions.any(axis=1)
        decisions[np.flatnonzero(empty), probs[empty].argmax(axis=1)] = True
    return decisions


def sigmoid(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    return 0.5 * (1.0 + np.tanh(0.5 * logits))  # overflow-free logistic


def score(gold: np.ndarray, pred: np.ndarray) -> dict:
    """micro-F1 (the official figure), macro-F1 and per-label precision/recall/F1/support."""
    gold = np.asarray(gold).astype(int)
    pred = np.asarray(pred).astype(int)
    if gold.shape != pred.shape or gold.ndim != 2 or gold.shape[1] != NUM_LABELS:
        raise ValueError(f"gold and pred must both be (N, {NUM_LABELS}); got {gold.shape} and {pred.shape}")
    from sklearn.metrics import f1_score, precision_recall_fscore_support  # ~1 s: scoring needs it, predicting not

    precision, recall, f1, support = precision_recall_fscore_support(gold, pred, average=None, zero_division=0)
    return {
        "micro_f1": float(f1_score(gold, pred, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(gold, pred, average="macro", zero_division=0)),
        "num_rows": int(gold.shape[0]),
        "per_label": {
            label: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for label, p, r, f, s in zip(LABELS, precision, recall, f1, support)
        },
    }


def format_table(named_scores: dict[str, dict]) -> str:
    """A plain-text table: one row per named score (e.g. each fold and OOF), micro/macro and per-label F1."""
    header = ["", "micro_f1", "macro_f1", *LABELS]
    rows = [header]
    for name, result in named_scores.items():
        rows.append(
            [name, f"{result['micro_f1']:.4f}", f"{result['macro_f1']:.4f}"]
            + [f"{result['per_label'][label]['f1']:.4f}" for label in LABELS]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.rjust(width) for cell, width in zip(row, widths)) for row in rows)


def score_files(gold_path: str, pred_path: str) -> dict:
    """The official scoring: rows matched by id, both files NIKL jsonl with labels; every id on both sides."""
    from nikl_emotion.base.errors import PipelineError
    from nikl_emotion.text.data import load_jsonl

    gold = load_jsonl(gold_path, "required")
    pred = load_jsonl(pred_path, "required")
    for path in (gold_path, pred_path):
        _check_official_outputs(path)
    gold_ids, pred_ids = gold["id"], pred["id"]
    position = {row_id: i for i, row_id in enumerate(pred_ids)}
    missing = next((row_id for row_id in gold_ids if row_id not in position), None)
    if missing is not None:
        raise PipelineError(f"{pred_path}: no prediction for id {missing!r} of {gold_path}")
    if len(pred_ids) != len(gold_ids):
        gold_set = set(gold_ids)
        extra = next(row_id for row_id in pred_ids if row_id not in gold_set)
        raise PipelineError(f"{pred_path}: id {extra!r} is not in {gold_path}")
    order = [position[row_id] for row_id in gold_ids]
    return score(np.asarray(gold["labels"]), np.asarray(pred["labels"])[order])


_OFFICIAL_VALUES = {"True": True, "true": True, "False": False, "false": False}


def _check_official_outputs(path: str) -> None:
    """The official scorer reads each row's `output.values()` by position and counts only "True"/"true" as
    positive. A file it would read differently from this pipeline (labels in another order; 1/0, JSON booleans,
    "TRUE") is refused, naming line and field, rather than given a score the official scorer would not print."""
    from nikl_emotion.base.errors import RowError
    from nikl_emotion.base.fileio import iter_json_lines

    for line, obj in iter_json_lines(path):
        output = obj.get("output") if isinstance(obj, dict) else None
        if not isinstance(output, dict):
            continue  # load_jsonl has named it already
        if list(output) != list(LABELS):
            raise RowError(
                path,
                line,
                "output",
                f"labels in another order ({', '.join(map(str, output))}); the official "
                f"scorer reads them by position: write {', '.join(LABELS)}",
            )
        for label, value in output.items():
            if not isinstance(value, str) or value not in _OFFICIAL_VALUES:
                raise RowError(
                    path,
                    line,
                    f"output.{label}",
                    f'{value!r}: the official scorer counts only "True"/"true" as positive; write "True" or "False"',
                )
