"""Files in, files out: predict a jsonl file with one or more checkpoints, a finished run or a stack of runs, and
write the submission. Each checkpoint is an `EmotionClassifier` (a `best/` folder or an ONNX export), the folds of a
run or stack a `RunClassifier`; a `DecisionRule` turns their probabilities into labels."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from nikl_emotion.backends.classifier import default_device
from nikl_emotion.backends.precision import LoadOptions
from nikl_emotion.backends.registry import load_checkpoint
from nikl_emotion.base.errors import PipelineError
from nikl_emotion.base.fileio import check_distinct_paths, check_output_path, write_probs, write_submission
from nikl_emotion.decisions.voting import DecisionRule
from nikl_emotion.runs.run_classifier import RunClassifier
from nikl_emotion.text.data import iter_column, iter_inputs, load_jsonl

logger = logging.getLogger(__name__)


def checkpoint_loader(device: torch.device, options: LoadOptions | None = None):
    """Loads one checkpoint (any backend's best/ folder, or an export) as a `CheckpointClassifier` on `device`, with
    `options` (dtype, 4-bit, remote code)."""
    return lambda path: load_checkpoint(path, device=device, options=options)


def resolve_device(name: str | None) -> torch.device:
    """`--device` as a torch device that exists here (cuda without a GPU is refused before any work)."""
    if not name:
        return default_device()
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise PipelineError(f"--device: {name!r} is not a device (cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise PipelineError(f"--device: {name} is not available here (GPUs visible: {torch.cuda.device_count()})")
    if device.type not in ("cpu", "cuda", "mps"):
        raise PipelineError(f"--device: {name!r}: use cpu or cuda")
    return device


def predict_file(
    checkpoints: Sequence[str],
    input_path: str,
    output_path: str,
    *,
    probs_path: str | None = None,
    rule: DecisionRule | None = None,
    batch_size: int = 128,
    device: str | None = None,
    options: LoadOptions | None = None,
) -> np.ndarray:
    """Predict `input_path` with one or more checkpoints and write the submission (and the mean probabilities).

    A checkpoint is a `best/` folder or an `export.py` (ONNX) folder. `rule` (default: hard vote at 0.5 with the
    empty-row fallback; a run's saved `DecisionRule` to rebuild its submission) turns their probabilities into
    labels. Checkpoints are loaded one at a time, with `options` (precision.LoadOptions). Returns the decisions.
    """
    check_prediction_outputs(input_path, output_path, probs_path, batch_size)
    loader = checkpoint_loader(resolve_device(device), options)
    classifier = RunClassifier.from_checkpoints(list(checkpoints), rule or DecisionRule(), loader)
    return predict_file_with(classifier, input_path, output_path, probs_path=probs_path, batch_size=batch_size)


def predict_run_file(
    run_dir: str,
    input_path: str,
    output_path: str,
    *,
    probs_path: str | None = None,
    batch_size: int = 128,
    device: str | None = None,
    options: LoadOptions | None = None,
) -> np.ndarray:
    """`predict_file` with a finished run's folds or a stack folder's (`inference.py --run`), voted by its saved rule:
    for the run's own test file, the same bytes as its submission.jsonl."""
    check_prediction_outputs(input_path, output_path, probs_path, batch_size)
    classifier = RunClassifier.open(run_dir, checkpoint_loader(resolve_device(device), options), "--run")
    return predict_file_with(classifier, input_path, output_path, probs_path=probs_path, batch_size=batch_size)


def check_prediction_outputs(input_path: str, output_path: str, probs_path: str | None, batch_size: int) -> None:
    if batch_size < 1:
        raise PipelineError(f"--batch_size: must be at least 1, got {batch_size}")
    check_distinct_paths({"--input": input_path}, {"--output": output_path, "--probs": probs_path})
    for option, path in (("--output", output_path), ("--probs", probs_path)):
        if path is not None:
            check_output_path(path, option)


def predict_file_with(
    classifier: RunClassifier,
    input_path: str,
    output_path: str,
    *,
    probs_path: str | None = None,
    batch_size: int = 128,
) -> np.ndarray:
    """The submission (and mean probabilities) of `classifier`'s folds for `input_path`; returns the decisions."""
    rows = load_jsonl(input_path, "optional")
    labelled = len(rows) - rows.with_format("arrow")["labels"].null_count
    if labelled:
        logger.info("%s: %d rows carry labels; prediction ignores them (score.py compares them)", input_path, labelled)
    fold_probs = classifier.fold_probabilities(rows, batch_size=batch_size, progress=True)
    decisions = classifier.rule.apply(fold_probs)
    if probs_path:
        write_probs(probs_path, iter_column(rows, "id"), classifier.rule.mean(fold_probs))
    write_submission(output_path, iter_column(rows, "id"), iter_inputs(rows), decisions)
    return decisions
