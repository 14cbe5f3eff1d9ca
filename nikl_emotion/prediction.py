"""Files in, files out: predict a jsonl file with one or more checkpoints (or a finished run) and write the
submission. Each checkpoint is an `EmotionClassifier` (a `best/` folder or an ONNX export); the run's
`DecisionRule` turns their probabilities into labels."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
import torch

from nikl_emotion.classifier import EmotionClassifier, default_device
from nikl_emotion.data import iter_column, iter_inputs, load_jsonl
from nikl_emotion.errors import PipelineError
from nikl_emotion.fileio import check_distinct_paths, check_output_path, write_probs, write_submission
from nikl_emotion.folder_kind import require_kind
from nikl_emotion.run_folder import RunFolder, read_mapping
from nikl_emotion.voting import DecisionRule

logger = logging.getLogger(__name__)


def run_checkpoints(run_dir: str) -> tuple[list[str], DecisionRule]:
    """A finished run's fold checkpoints and the decision rule its `submission.jsonl` was made with."""
    require_kind(run_dir, "run", "--run")
    run = RunFolder(run_dir)
    config = read_mapping(run.config)
    if not config or not os.path.isfile(run.decision):
        raise PipelineError(f"{run_dir}: not a finished train.py run (needs {os.path.basename(run.config)} and "
                            f"{os.path.basename(run.decision)}, written when every fold is done)")
    folds = [run.fold(k).best for k in range(int(config.get("num_folds", 0)))]
    missing = next((path for path in folds if not os.path.isdir(path)), None)
    if missing is not None:
        raise PipelineError(f"{missing}: checkpoint folder not found")
    rule = DecisionRule.load(run.decision)
    try:
        rule.check_models(len(folds))  # before any prediction work
    except PipelineError as exc:
        raise PipelineError(f"{run.decision}: {exc}") from None
    return folds, rule


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
) -> np.ndarray:
    """Predict `input_path` with one or more checkpoints and write the submission (and the mean probabilities).

    A checkpoint is a `best/` folder or an `export.py` (ONNX) folder. `rule` (default: hard vote at 0.5 with the
    empty-row fallback; a run's saved `DecisionRule` to rebuild its submission) turns their probabilities into
    labels. Checkpoints are loaded one at a time. Returns the decisions.
    """
    rule = rule or DecisionRule()
    if batch_size < 1:
        raise PipelineError(f"--batch_size: must be at least 1, got {batch_size}")
    check_distinct_paths({"--input": input_path}, {"--output": output_path, "--probs": probs_path})
    for option, path in (("--output", output_path), ("--probs", probs_path)):
        if path is not None:
            check_output_path(path, option)
    target_device = resolve_device(device)
    rows = load_jsonl(input_path, "optional")
    labelled = len(rows) - rows.with_format("arrow")["labels"].null_count
    if labelled:
        logger.info("%s: %d rows carry labels; prediction ignores them (score.py compares them)", input_path, labelled)
    all_probs = []
    for path in checkpoints:
        classifier = EmotionClassifier.from_pretrained(path, device=target_device)
        all_probs.append(classifier.predict_proba(rows, batch_size=batch_size, progress=True))
        del classifier
    decisions = rule.apply(all_probs)
    if probs_path:
        write_probs(probs_path, iter_column(rows, "id"), rule.mean(all_probs))
    write_submission(output_path, iter_column(rows, "id"), iter_inputs(rows), decisions)
    return decisions
