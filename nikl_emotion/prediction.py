"""Batched inference: rows sorted by length (little padding), original order restored, no autograd."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
import torch
from datasets import Dataset
from transformers import AutoModelForSequenceClassification, PreTrainedModel, PreTrainedTokenizerBase

from nikl_emotion.backbone import load_tokenizer
from nikl_emotion.batching import column_array, pad_table
from nikl_emotion.data import iter_column, iter_inputs, load_jsonl
from nikl_emotion.errors import PipelineError
from nikl_emotion.fileio import write_probs, write_submission
from nikl_emotion.labels import ID2LABEL
from nikl_emotion.metrics import decide, sigmoid
from nikl_emotion.preprocessing import Preprocessing, clean, encode
from nikl_emotion.voting import hard_vote

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
logger = logging.getLogger(__name__)


def predict_probs(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    encoded: Dataset,
    batch_size: int = 128,
    device: torch.device | str | None = None,
) -> np.ndarray:
    """Sigmoid probabilities, shape (len(encoded), 8), in the dataset's order.

    `encoded` is the output of `tokenize_batch` (it carries a `length` column).
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    columns = [name for name in MODEL_INPUTS if name in encoded.column_names]
    lengths = column_array(encoded, "length")
    order = np.argsort(-lengths, kind="stable")  # longest first: an out-of-memory shows up at once
    pad_multiple = 8 if device.type == "cuda" else None  # tensor-core friendly shapes on GPU
    arrow_rows = encoded.select_columns(columns).with_format("arrow")  # one Arrow `take` per batch
    logits = np.empty((len(encoded), model.config.num_labels), dtype=np.float32)
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            batch = pad_table(arrow_rows[index.tolist()], columns, tokenizer.pad_token_id, pad_multiple)
            batch = {key: value.to(device) for key, value in batch.items()}
            logits[index] = model(**batch).logits.float().cpu().numpy()
    model.train(was_training)
    return sigmoid(logits)


def load_checkpoint(path: str):
    """(model, tokenizer, preprocessing) from a `best/` folder written by train.py; refuses other label sets."""
    if not os.path.isdir(path):
        raise PipelineError(f"{path}: checkpoint folder not found")
    preprocessing = Preprocessing.load(path)
    model = AutoModelForSequenceClassification.from_pretrained(path)
    labels = {int(k): v for k, v in model.config.id2label.items()}
    if labels != ID2LABEL:
        raise PipelineError(f"{path}: the checkpoint's labels {labels} differ from this pipeline's {ID2LABEL}")
    tokenizer = load_tokenizer(path)
    return model, tokenizer, preprocessing


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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
) -> np.ndarray:
    """Predict `input_path` with one or more checkpoints and write the submission (and probabilities).

    Several checkpoints are combined by `strategy`: `hard` (majority vote of each checkpoint's decisions, see
    `voting.hard_vote`) or `soft` (mean probability, then the threshold). The probability file holds the mean.
    Returns the decisions.
    """
    if strategy not in ("hard", "soft"):
        raise PipelineError(f"strategy: {strategy!r} is not hard or soft")
    rows = load_jsonl(input_path, "optional")
    labelled = len(rows) - rows.with_format("arrow")["labels"].null_count
    if labelled:
        logger.info("%s: %d rows carry labels; prediction ignores them (score.py compares them)", input_path, labelled)
    target_device = torch.device(device) if device else default_device()
    all_probs = []
    for path in checkpoints:
        model, tokenizer, preprocessing = load_checkpoint(path)
        model.to(target_device)
        encoded = encode(clean(rows, preprocessing), tokenizer, preprocessing)
        all_probs.append(predict_probs(model, tokenizer, encoded, batch_size, target_device))
        del model
    mean_probs = np.mean(all_probs, axis=0)
    if strategy == "soft" or len(all_probs) == 1:
        decisions = decide(mean_probs, threshold, fallback)
    else:
        decisions = hard_vote([decide(p, threshold, fallback) for p in all_probs], fallback=fallback, mean_probs=mean_probs)
    if probs_path:
        write_probs(probs_path, iter_column(rows, "id"), mean_probs)
    write_submission(output_path, iter_column(rows, "id"), iter_inputs(rows), decisions)
    return decisions
