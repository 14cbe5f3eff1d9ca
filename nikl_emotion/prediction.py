"""Batched inference: rows sorted by length (little padding), original order restored, no autograd."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence

import numpy as np
import torch
from datasets import Dataset
from tqdm.auto import tqdm
from transformers import AutoModelForSequenceClassification, PreTrainedModel, PreTrainedTokenizerBase

from nikl_emotion.backbone import load_tokenizer
from nikl_emotion.batching import MODEL_INPUTS, length_order, pad_table
from nikl_emotion.data import iter_column, iter_inputs, load_jsonl
from nikl_emotion.errors import PipelineError
from nikl_emotion.export import is_onnx_export, load_onnx_export
from nikl_emotion.fileio import check_distinct_paths, check_output_path, write_probs, write_submission
from nikl_emotion.labels import ID2LABEL, NUM_LABELS
from nikl_emotion.metrics import sigmoid
from nikl_emotion.preprocessing import Preprocessing, clean, encode
from nikl_emotion.voting import DecisionRule

logger = logging.getLogger(__name__)
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "sentencepiece.bpe.model", "spiece.model", "tokenizer.model", "vocab.json")


def predict_sorted(
    run_batch: Callable[[dict[str, torch.Tensor]], np.ndarray],
    encoded: Dataset,
    columns: list[str],
    pad_token_id: int,
    batch_size: int = 128,
    pad_to_multiple_of: int | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Logits of `run_batch` (padded batch -> (rows, labels) array) for every row of `encoded`, in its order.

    Batches are cut from the rows sorted by length, longest first (little padding; an out-of-memory shows at once),
    padded with numpy from Arrow, and the results are put back in the dataset's order. A progress bar with ETA goes
    to stderr when `progress`.
    """
    order = length_order(encoded)
    arrow_rows = encoded.select_columns(columns).with_format("arrow")  # one Arrow `take` per batch
    logits: np.ndarray | None = None
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc="predicting", unit="batch", disable=not progress, leave=False):
        index = order[start : start + batch_size]
        out = run_batch(pad_table(arrow_rows[index.tolist()], columns, pad_token_id, pad_to_multiple_of))
        if logits is None:
            logits = np.empty((len(encoded), out.shape[1]), dtype=np.float32)
        logits[index] = out
    return logits if logits is not None else np.empty((0, NUM_LABELS), dtype=np.float32)


def predict_probs(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    encoded: Dataset,
    batch_size: int = 128,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Sigmoid probabilities, shape (len(encoded), 8), in the dataset's order.

    `encoded` is the output of `tokenize_batch` (it carries a `length` column).
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    columns = [name for name in MODEL_INPUTS if name in encoded.column_names]

    def run_batch(batch: dict[str, torch.Tensor]) -> np.ndarray:
        return model(**{key: value.to(device) for key, value in batch.items()}).logits.float().cpu().numpy()

    was_training = model.training
    model.eval()
    with torch.inference_mode():
        pad_multiple = 8 if device.type == "cuda" else None  # tensor-core friendly shapes on GPU
        logits = predict_sorted(run_batch, encoded, columns, tokenizer.pad_token_id, batch_size, pad_multiple, progress)
    model.train(was_training)
    return sigmoid(logits)


def load_checkpoint(path: str):
    """(model, tokenizer, preprocessing) from a `best/` folder written by train.py; refuses other label sets."""
    if not os.path.isdir(path):
        raise PipelineError(f"{path}: checkpoint folder not found")
    preprocessing = Preprocessing.load(path)
    check_tokenizer_files(path)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path)
        tokenizer = load_tokenizer(path, fix_hangul=False)  # exactly as in training
    except Exception as exc:  # a damaged folder: bad config.json, truncated weights, unreadable tokenizer
        raise PipelineError(f"{path}: cannot load the checkpoint ({type(exc).__name__}: {first_line(exc)})") from None
    labels = {int(k): v for k, v in model.config.id2label.items()}
    if labels != ID2LABEL:
        raise PipelineError(f"{path}: the checkpoint's labels {labels} differ from this pipeline's {ID2LABEL}")
    return model, tokenizer, preprocessing


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:300]


def _as_threshold(threshold: float | np.ndarray) -> float | tuple[float, ...]:
    values = np.asarray(threshold, dtype=np.float64)
    return float(values) if values.ndim == 0 else tuple(float(v) for v in values)


def run_checkpoints(run_dir: str) -> tuple[list[str], DecisionRule]:
    """A finished run's fold checkpoints and the decision rule its `submission.jsonl` was made with."""
    from nikl_emotion.run_folder import RunFolder, read_mapping

    run = RunFolder(run_dir)
    config = read_mapping(run.config)
    if not config or not os.path.isfile(run.decision):
        raise PipelineError(f"{run_dir}: not a finished train.py run (needs {os.path.basename(run.config)} and "
                            f"{os.path.basename(run.decision)}, written when every fold is done)")
    folds = [run.fold(k).best for k in range(int(config.get("num_folds", 0)))]
    missing = next((path for path in folds if not os.path.isdir(path)), None)
    if missing is not None:
        raise PipelineError(f"{missing}: checkpoint folder not found")
    return folds, DecisionRule.load(run.decision)


def check_tokenizer_files(path: str) -> None:
    """Without its tokenizer files a folder still "loads" a tokenizer of special tokens only, and every word of
    every row becomes the unknown token: refuse it instead."""
    if not any(os.path.isfile(os.path.join(path, name)) for name in TOKENIZER_FILES):
        raise PipelineError(f"{path}: no tokenizer files (one of {', '.join(TOKENIZER_FILES)}); copy the tokenizer "
                            "that was saved with the checkpoint into the folder")


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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
    probs_path: str | None = None,
    batch_size: int = 128,
    threshold: float | np.ndarray = 0.5,
    fallback: bool = True,
    strategy: str = "hard",
    device: str | None = None,
    rule: DecisionRule | None = None,
) -> np.ndarray:
    """Predict `input_path` with one or more checkpoints and write the submission (and probabilities).

    A checkpoint is a `best/` folder or an `export.py` (ONNX) folder. Several are combined by `strategy`: `hard` (majority vote of each checkpoint's decisions, see
    `voting.hard_vote`) or `soft` (mean probability, then the threshold). `rule` (e.g. a run's saved
    `DecisionRule`) replaces `threshold`, `fallback` and `strategy` and also carries the vote rule. The probability
    file holds the mean. Returns the decisions.
    """
    rule = rule or DecisionRule(strategy=strategy, threshold=_as_threshold(threshold), fallback=fallback)
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
        if is_onnx_export(path):  # an export.py folder: onnxruntime on CPU, same batching
            classifier, tokenizer, preprocessing = load_onnx_export(path)
            encoded = encode(clean(rows, preprocessing), tokenizer, preprocessing, on_unknown="warn")
            columns = [name for name in classifier.input_names if name in encoded.column_names]
            all_probs.append(sigmoid(predict_sorted(classifier, encoded, columns, tokenizer.pad_token_id, batch_size)))
            continue
        model, tokenizer, preprocessing = load_checkpoint(path)
        model.to(target_device)
        encoded = encode(clean(rows, preprocessing), tokenizer, preprocessing, on_unknown="warn")
        all_probs.append(predict_probs(model, tokenizer, encoded, batch_size, target_device))
        del model
    decisions = rule.apply(all_probs)
    mean_probs = rule.mean(all_probs)
    if probs_path:
        write_probs(probs_path, iter_column(rows, "id"), mean_probs)
    write_submission(output_path, iter_column(rows, "id"), iter_inputs(rows), decisions)
    return decisions
