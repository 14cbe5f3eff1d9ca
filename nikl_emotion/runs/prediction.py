"""Files in, files out: predict a jsonl file with one or more checkpoints, a finished run or a stack of runs, and
write the submission. Each checkpoint is an `EmotionClassifier` (a `best/` folder or an ONNX export), the folds of a
run or stack a `RunClassifier`; a `DecisionRule` turns their probabilities into labels."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from nikl_emotion.backends.classifier import default_device
from nikl_emotion.backends.precision import LoadOptions
from nikl_emotion.backends.registry import load_checkpoint
from nikl_emotion.base.errors import PipelineError
from nikl_emotion.base.fileio import check_distinct_paths, check_output_path
from nikl_emotion.decisions.voting import DecisionRule
from nikl_emotion.runs.run_classifier import RunClassifier
from nikl_emotion.runs.streaming import predict_in_chunks

__all__ = [
    "checkpoint_loader",
    "PredictionFiles",
    "predict_file",
    "predict_run_file",
]


def checkpoint_loader(device: str | None = None, options: LoadOptions | None = None):
    """Loads one checkpoint (any backend's best/ folder, or an export) as a `CheckpointClassifier` on `device` (a
    name: cpu, cuda, cuda:1; default cuda when available, checked at once), with `options` (dtype, 4-bit, remote
    code)."""
    resolved = _resolve_device(device)
    return lambda path: load_checkpoint(path, device=resolved, options=options)


def _resolve_device(name: str | None) -> torch.device:
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


@dataclass(frozen=True)
class PredictionFiles:
    """What a prediction reads and writes (`--input`, `--output`, `--probs`) and its batch size, checked before any
    model loads."""

    input_path: str
    output_path: str
    probs_path: str | None = None
    batch_size: int = 128
    # rows predicted together (sorted by length inside); memory holds one chunk. None: streaming.chunk_size_for the
    # file's rows (the same for any number of processes)
    chunk_size: int | None = None

    def check(self) -> None:
        if self.batch_size < 1:
            raise PipelineError(f"--batch_size: must be at least 1, got {self.batch_size}")
        if self.chunk_size is not None and self.chunk_size < 1:
            raise PipelineError(f"--chunk_size: must be at least 1, got {self.chunk_size}")
        outputs = {"--output": self.output_path, "--probs": self.probs_path}
        check_distinct_paths({"--input": self.input_path}, outputs)
        for option, path in outputs.items():
            if path is not None:
                check_output_path(path, option)


def predict_file(
    checkpoints: Sequence[str], files: PredictionFiles, rule: DecisionRule | None = None, loader=None
) -> int:
    """Predict `files.input_path` with one or more checkpoints and write the submission (and the mean
    probabilities).

    A checkpoint is a `best/` folder or an `export.py` (ONNX) folder. `rule` (default: hard vote at 0.5 with the
    empty-row fallback; a run's saved `DecisionRule` to rebuild its submission) turns their probabilities into
    labels. Checkpoints are loaded one at a time by `loader` (default: `checkpoint_loader()`, each as its run
    trained). The file is read in chunks (`files.chunk_size`) and, under `accelerate launch`, split across the
    processes (`streaming.py`). Returns the number of rows.
    """
    files.check()
    classifier = RunClassifier.from_checkpoints(
        list(checkpoints), rule or DecisionRule(), loader or checkpoint_loader()
    )
    return predict_in_chunks(classifier, files)


def predict_run_file(run_dir: str, files: PredictionFiles, loader=None) -> int:
    """`predict_file` with a finished run's folds or a stack folder's (`inference.py --run`), voted by its saved rule:
    for the run's own test file, the same bytes as its submission.jsonl."""
    files.check()
    classifier = RunClassifier.open(run_dir, loader or checkpoint_loader(), "--run")
    return predict_in_chunks(classifier, files)
