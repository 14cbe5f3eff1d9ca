"""Rows -> model inputs: cleaning and target-aware tokenization, both as cached batched `map`s.

The settings are saved beside every checkpoint (`preprocessing.json`) so inference encodes text exactly as the
model saw it in training.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from nikl_emotion.base.checkpoint_files import PREPROCESSING_FILE
from nikl_emotion.base.errors import PipelineError
from nikl_emotion.base.fileio import write_json_atomic
from nikl_emotion.base.labels import LABELS
from nikl_emotion.base.vocabulary import (
    DEFAULT_INPUT_TEMPLATE,
    INPUT_FORMATS,
    MAX_UNKNOWN_RATE,
    PRETOKENIZERS,
)
from nikl_emotion.text.batching import MODEL_INPUTS, column_array
from nikl_emotion.text.cleaning import CleaningOptions, clean_batch
from nikl_emotion.text.data import RowTable, arrow_column, load_jsonl, load_jsonl_files
from nikl_emotion.text.encoding import tokenize_batch, unknown_rate_message, unknown_token_rate
from nikl_emotion.text.morphemes import segment_batch

__all__ = [
    "Preprocessing",
    "preprocessing_differences",
    "warn_if_preprocessing_differs",
    "clean",
    "encode",
    "check_unknown_rate",
    "TaskFiles",
    "load_task_files",
]


logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Preprocessing:
    cleaning: CleaningOptions
    input_format: str = "pair"
    max_seq_length: int = 200
    pretokenizer: str = "none"  # "kiwi": morpheme boundaries become spaces before the subword tokenizer
    classifier_head: str = "cls"  # the head the rows are encoded for (backends/heads.py)
    input_template: str = DEFAULT_INPUT_TEMPLATE  # input_format "instruction": the row as one string
    head_inputs: tuple[str, ...] = ()  # inputs the head reads beyond the tokenizer's: ("target_mask",) for target_pool

    @property
    def marks_target(self) -> bool:
        """Whether the encoding also marks the target's tokens (`target_mask`) for the head."""
        return "target_mask" in self.head_inputs

    @classmethod
    def from_data_args(
        cls, data_args, classifier_head: str = "cls", head_inputs: tuple[str, ...] = ()
    ) -> Preprocessing:
        cleaning = CleaningOptions(
            remove_others=data_args.remove_others,
            remove_placeholders=data_args.remove_placeholders,
            cleanse=data_args.cleanse,
            remove_emoji=data_args.remove_emoji,
        )
        return cls(
            cleaning=cleaning,
            input_format=data_args.input_format,
            max_seq_length=data_args.max_seq_length,
            pretokenizer=data_args.offline_pretokenizer,
            classifier_head=classifier_head,
            input_template=data_args.input_template,
            head_inputs=tuple(head_inputs),
        )

    def save(self, folder: str) -> None:
        write_json_atomic(
            os.path.join(folder, PREPROCESSING_FILE), {**dataclasses.asdict(self), "labels": list(LABELS)}
        )

    @classmethod
    def load(cls, folder: str) -> Preprocessing:
        path = os.path.join(folder, PREPROCESSING_FILE)
        try:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
        except (OSError, json.JSONDecodeError) as exc:
            raise PipelineError(f"{path}: cannot read the checkpoint's preprocessing settings ({exc})") from None
        if not isinstance(data, dict):
            raise PipelineError(f"{path}: expected a JSON object")
        if data.get("labels") != list(LABELS):
            raise PipelineError(f"{path}: labels {data.get('labels')} differ from this pipeline's {list(LABELS)}")
        if data.get("input_format") not in INPUT_FORMATS:
            raise PipelineError(f"{path}: unknown input_format {data.get('input_format')!r}")
        cleaning, keys = data.get("cleaning"), [field.name for field in dataclasses.fields(CleaningOptions)]
        if not isinstance(cleaning, dict) or sorted(cleaning) != sorted(keys):
            raise PipelineError(f"{path}: cleaning: expected the keys {', '.join(keys)}")
        for key in keys:  # a string "false" would read as true
            if not isinstance(cleaning[key], bool):
                raise PipelineError(f"{path}: cleaning.{key}: expected true or false, got {cleaning[key]!r}")
        length = data.get("max_seq_length")
        if isinstance(length, bool) or not isinstance(length, int) or length < 8:
            raise PipelineError(f"{path}: max_seq_length: expected a whole number >= 8, got {length!r}")
        pretokenizer = data.get("pretokenizer", "none")  # checkpoints saved before the key existed: none
        if pretokenizer not in PRETOKENIZERS:
            raise PipelineError(f"{path}: unknown pretokenizer {pretokenizer!r}")
        head = data.get("classifier_head", "cls")  # checkpoints saved before the key existed: cls
        if not isinstance(head, str) or not head:
            raise PipelineError(f"{path}: classifier_head: expected a head's name, got {head!r}")
        # saved before head_inputs existed: target_pool was the one head that read more than the tokenizer's
        inputs = data.get("head_inputs", ["target_mask"] if head == "target_pool" else [])
        if not isinstance(inputs, list) or any(name not in MODEL_INPUTS for name in inputs):
            raise PipelineError(f"{path}: head_inputs: expected a list of {', '.join(MODEL_INPUTS)}, got {inputs!r}")
        template = data.get("input_template", DEFAULT_INPUT_TEMPLATE)
        if not isinstance(template, str) or "{text}" not in template or "{target}" not in template:
            raise PipelineError(f"{path}: input_template: expected a string with {{text}} and {{target}}")
        return cls(
            CleaningOptions(**cleaning), data["input_format"], length, pretokenizer, head, template, tuple(inputs)
        )


def preprocessing_differences(backbone: str, preprocessing: Preprocessing) -> list[str]:
    """Settings in which `preprocessing` differs from the one a post-trained backbone folder learned its text with
    (its `preprocessing.json`); empty for a folder without one (a hub model, the offline backbone)."""
    if not os.path.isfile(os.path.join(backbone, PREPROCESSING_FILE)):
        return []
    learned = Preprocessing.load(backbone)
    differences = [
        f"{key}: {getattr(learned.cleaning, key)} there, {getattr(preprocessing.cleaning, key)} here"
        for key in (field.name for field in dataclasses.fields(CleaningOptions))
        if getattr(learned.cleaning, key) != getattr(preprocessing.cleaning, key)
    ]
    if learned.input_format != preprocessing.input_format:
        differences.append(f"input_format: {learned.input_format} there, {preprocessing.input_format} here")
    return differences


def warn_if_preprocessing_differs(backbone: str, preprocessing: Preprocessing) -> None:
    """A post-trained encoder (and its tokenizer) learned the text in one form; fine-tuning it on another still runs
    but throws part of the post-training away, so say which keys differ."""
    differences = preprocessing_differences(backbone, preprocessing)
    if differences:
        logger.warning(
            "%s was post-trained on text prepared differently (%s); set the same cleaning keys and input_format as "
            "its post-training config unless this is deliberate",
            backbone,
            "; ".join(differences),
        )


_IN_MEMORY_BATCH = 4096  # rows per call of a map function on an in-memory table: bounds its Python lists


def _map(
    rows: RowTable, function, fn_kwargs: dict | None = None, desc: str | None = None, batch_size: int = 1000
) -> RowTable:
    """A batched map function over the rows, its returned columns replacing or joining theirs: `datasets`' cached
    `map` on a dataset; on an in-memory table the same function in plain Python, batch by batch (no fingerprint, no
    cache file, no progress bar: what a request of a few rows cannot afford)."""
    if isinstance(rows, Dataset):
        return rows.map(function, batched=True, batch_size=batch_size, fn_kwargs=fn_kwargs, desc=desc)
    parts = []
    for start in range(0, max(len(rows), 1), _IN_MEMORY_BATCH):
        part = rows.slice(start, _IN_MEMORY_BATCH)
        for name, values in function(part.to_pydict(), **(fn_kwargs or {})).items():
            column, index = pa.array(values), part.schema.get_field_index(name)
            part = part.set_column(index, name, column) if index >= 0 else part.append_column(name, column)
        parts.append(part)
    return pa.concat_tables(parts, promote_options="default") if len(parts) > 1 else parts[0]


def clean(rows: RowTable, preprocessing: Preprocessing) -> RowTable:
    """Cleaned rows (then segmented into morphemes with `pretokenizer: kiwi`); a text that cleaning empties (e.g.
    only emoji) is kept, encoded as the target alone or empty. A dataset stays a dataset (cached maps), an
    in-memory table a table."""
    if preprocessing.pretokenizer == "kiwi":
        rows = (
            rows
            if not preprocessing.cleaning.any
            else clean(rows, dataclasses.replace(preprocessing, pretokenizer="none"))
        )
        # one analyser process-wide with its own threads: datasets' multiprocessing would load one per worker
        return _map(rows, segment_batch, desc="morpheme segmentation", batch_size=4096)
    if not preprocessing.cleaning.any:
        return rows
    cleaned = _map(rows, clean_batch, {"options": preprocessing.cleaning}, "cleaning")
    empty = pc.sum(pc.equal(pc.utf8_length(arrow_column(cleaned, "text")), 0)).as_py() or 0
    if empty:
        logger.info("cleaning left %d of %d texts empty; they are kept and encoded without text", empty, len(cleaned))
    return cleaned


def encode(
    cleaned: RowTable,
    tokenizer: PreTrainedTokenizerBase,
    preprocessing: Preprocessing,
    on_unknown: str = "error",
    max_unknown_rate: float = MAX_UNKNOWN_RATE,
) -> RowTable:
    """Adds input_ids, attention_mask (token_type_ids where the tokenizer makes them) and length; no padding.
    More than `max_unknown_rate` unknown tokens stops with the rate and its likely cause (`on_unknown="error"`,
    for training) or logs them (`"warn"`, for inference). A `target_pool` head's rows also get `target_mask`."""
    if preprocessing.marks_target and not tokenizer.is_fast:
        raise PipelineError(
            f"classifier_head: {preprocessing.classifier_head} finds the target's tokens through the "
            f"tokenizer's character offsets, which {type(tokenizer).__name__} (a slow tokenizer) "
            "does not give; use the model's fast tokenizer (tokenizer.json) or classifier_head: cls"
        )
    encoded = _map(
        cleaned,
        tokenize_batch,
        {
            "tokenizer": tokenizer,
            "input_format": preprocessing.input_format,
            "max_length": preprocessing.max_seq_length,
            "target_mask": preprocessing.marks_target,
            "input_template": preprocessing.input_template,
        },
        "tokenizing",
    )
    check_unknown_rate(encoded, tokenizer, on_unknown, max_unknown_rate)
    at_limit = int((column_array(encoded, "length") >= preprocessing.max_seq_length).sum())
    if at_limit:
        logger.info(
            "%d of %d rows reach max_seq_length %d and are truncated",
            at_limit,
            len(encoded),
            preprocessing.max_seq_length,
        )
    return encoded


def check_unknown_rate(
    encoded: RowTable,
    tokenizer: PreTrainedTokenizerBase,
    on_unknown: str = "error",
    max_unknown_rate: float = MAX_UNKNOWN_RATE,
) -> float:
    """The unknown-token rate of `encoded`; above `max_unknown_rate` an error (`on_unknown="error"`) or a warning."""
    rate, tokens = unknown_token_rate(encoded, tokenizer)
    if rate > max_unknown_rate:
        message = unknown_rate_message(rate, tokens, tokenizer, max_unknown_rate)
        if on_unknown == "error":
            raise PipelineError(message)
        logger.warning(message)
    elif rate > 0:
        logger.info("%.2f%% of %d tokens are the unknown token %s", 100 * rate, tokens, tokenizer.unk_token)
    return rate


@dataclass
class TaskFiles:
    """A command's input files, validated and cleaned: its training rows, its test rows (or None) and any other
    files it named, in their given order (None where a path was not given)."""

    preprocessing: Preprocessing
    train: Dataset
    test: Dataset | None
    cleaned: Dataset
    cleaned_test: Dataset | None
    others: list[Dataset | None]


def load_task_files(
    data_args,
    training_args,
    *,
    train_labels: str = "required",
    others: tuple[tuple[str | None, str], ...] = (),
    classifier_head: str = "cls",
    head_inputs: tuple[str, ...] = (),
) -> TaskFiles:
    """The loading preamble every command shares: the settings' `train_files` (labels `train_labels`) and
    `test_file` (when the settings have one), then `others` ((path, label mode) pairs), each row validated before
    anything is written, cleaned with the settings' `Preprocessing` (encoding for `classifier_head`, which reads
    `head_inputs`). The main process goes first: it fills the
    datasets cache, which the other ranks of a distributed run then read."""
    preprocessing = Preprocessing.from_data_args(data_args, classifier_head, head_inputs)
    test_file = getattr(data_args, "test_file", None)
    with training_args.main_process_first(desc="loading and cleaning"):
        train = load_jsonl_files(data_args.train_files, train_labels)
        test = load_jsonl(test_file, "optional") if test_file else None
        loaded = [load_jsonl(path, mode) if path else None for path, mode in others]
        cleaned = clean(train, preprocessing)
        cleaned_test = clean(test, preprocessing) if test is not None else None
    return TaskFiles(preprocessing, train, test, cleaned, cleaned_test, loaded)
