"""Batched inference: rows sorted by length (little padding), original order restored, no autograd."""

from __future__ import annotations

import numpy as np
import torch
from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from nikl_emotion.metrics import sigmoid

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


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
    lengths = np.asarray(encoded["length"])
    order = np.argsort(-lengths, kind="stable")  # longest first: an out-of-memory shows up at once
    pad_multiple = 8 if device.type == "cuda" else None  # tensor-core friendly shapes on GPU
    rows = encoded.select_columns(columns)
    logits = np.empty((len(encoded), model.config.num_labels), dtype=np.float32)
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            batch = tokenizer.pad(rows[index.tolist()], pad_to_multiple_of=pad_multiple, return_tensors="pt")
            batch = {key: value.to(device) for key, value in batch.items()}
            logits[index] = model(**batch).logits.float().cpu().numpy()
    model.train(was_training)
    return sigmoid(logits)
