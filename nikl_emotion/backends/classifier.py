"""`CheckpointClassifier`: a fine-tuned checkpoint (`best/`) or its ONNX export behind one interface. Users reach it
as `nikl_emotion.EmotionClassifier` (run_classifier.py), which also opens finished runs and stacks:

    from nikl_emotion import EmotionClassifier
    classifier = EmotionClassifier.from_pretrained("out/fold_0/best")      # or an export.py folder
    probs = classifier.predict_proba("test.jsonl")                          # (rows, 8), file order
    labels = classifier.predict(["정말 최고였다"], threshold=0.5)            # bool (rows, 8)

A classifier owns what prediction needs besides the weights: the tokenizer exactly as trained, the checkpoint's
preprocessing settings (cleaning, input format, max length) and the label check. Its runtime turns one padded batch
into logits: `TorchRuntime` (a PyTorch model on a device, no autograd) or `OnnxRuntime` (onnxruntime on CPU); a
runtime with `reads_text` (the n-gram member's, built by backends/ngram.py) reads the cleaned text instead. (A
*backend* is what trains a fold, `fold_backend.FoldBackend`; its `load_checkpoint` builds the classifier and its
runtime.)
Rows are predicted in batches sorted by length (little padding) and returned in their own order.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from datasets import Dataset
from tqdm.auto import tqdm
from transformers import AutoConfig, PreTrainedModel, PreTrainedTokenizerBase

from nikl_emotion.backends.backbone import (
    HALF_PRECISION_KERNELS,
    attention_kernel_available,
    load_tokenizer,
    needs_remote_code,
)
from nikl_emotion.backends.heads import head_inputs, head_of, load_trained_model
from nikl_emotion.backends.precision import (
    LoadOptions,
    LoadRecord,
    ServingPrecision,
    autocast_context,
    serving_precision,
)
from nikl_emotion.base.checkpoint_files import EXPORT_FILE, ONNX_FILE, TOKENIZER_FILES
from nikl_emotion.base.config import ModelLoading
from nikl_emotion.base.errors import PipelineError
from nikl_emotion.base.labels import ID2LABEL, NUM_LABELS
from nikl_emotion.decisions.metrics import decide, sigmoid
from nikl_emotion.folders.folder_kind import folder_kind
from nikl_emotion.text.batching import MODEL_INPUTS, length_order, pad_table
from nikl_emotion.text.data import Rows, as_rows
from nikl_emotion.text.preprocessing import Preprocessing, clean, encode

__all__ = [
    "Runtime",
    "TorchRuntime",
    "OnnxRuntime",
    "LoadedModel",
    "serving_loading",
    "CheckpointClassifier",
    "is_onnx_export",
    "require",
    "first_line",
    "default_device",
]


logger = logging.getLogger(__name__)


class Runtime(Protocol):
    """One padded batch (name -> int64 tensor) to logits (rows, labels)."""

    input_names: list[str]
    pad_to_multiple_of: int | None

    def __call__(self, batch: dict[str, torch.Tensor]) -> np.ndarray: ...


class TorchRuntime:
    """A PyTorch sequence classifier on `device`, run under `inference_mode` in eval mode, and under `autocast`
    (a half dtype) where its run trained so (precision.py)."""

    def __init__(
        self,
        model: PreTrainedModel,
        input_names: Sequence[str],
        device: torch.device | str | None = None,
        autocast: torch.dtype | None = None,
    ):
        self.model = model
        self.autocast = autocast
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.input_names = [name for name in MODEL_INPUTS if name in input_names]
        self.pad_to_multiple_of = 8 if self.device.type == "cuda" else None  # tensor-core friendly shapes on GPU
        if next(model.parameters()).device != self.device:
            model.to(self.device)

    def __call__(self, batch: dict[str, torch.Tensor]) -> np.ndarray:
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode(), autocast_context(self.device, self.autocast):
                inputs = {name: batch[name].to(self.device) for name in self.input_names}
                return self.model(**inputs).logits.float().cpu().numpy()
        finally:
            self.model.train(was_training)


class OnnxRuntime:
    """An export folder's `model.onnx` with onnxruntime on CPU."""

    pad_to_multiple_of = None

    def __init__(self, folder: str, threads: int | None = None):
        ort = require("onnxruntime")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(
            os.path.join(folder, ONNX_FILE), options, providers=["CPUExecutionProvider"]
        )
        self.input_names = [node.name for node in self.session.get_inputs()]

    def __call__(self, batch: dict[str, torch.Tensor]) -> np.ndarray:
        return self.session.run(["logits"], {name: batch[name].numpy() for name in self.input_names})[0]


@dataclass
class LoadedModel:
    """A checkpoint's model as a backend's loader gives it: the weights its folder lacked (an untrained head shows
    here) and the autocast it runs under."""

    model: PreTrainedModel
    missing_keys: list[str]
    autocast: torch.dtype | None = None


def serving_loading(
    folder: str, record: LoadRecord, options: LoadOptions, precision: ServingPrecision | None = None
) -> ModelLoading:
    """The model-loading keys to serve `folder` with: its own modelling code only when the caller trusts it, the
    attention kernel its run used where this machine has it (transformers' default otherwise) and where `precision`
    gives it half-precision tensors (a flash kernel served in float32, as `--dtype fp32` or ONNX export ask, runs
    sdpa instead)."""
    if not options.trust_remote_code and (record.trust_remote_code or needs_remote_code(folder, ModelLoading())):
        raise PipelineError(
            f"{folder}: the model runs code shipped with the checkpoint (trust_remote_code); pass "
            "--trust_remote_code (EmotionClassifier.from_pretrained(..., trust_remote_code=True)) "
            "if you trust it"
        )
    kernel = record.attn_implementation
    if kernel is not None and not attention_kernel_available(kernel):
        logger.info(
            "%s: trained with attn_implementation %s, which this machine lacks; transformers' default kernel serves it",
            folder,
            kernel,
        )
        kernel = None
    float32 = precision is not None and precision.autocast is None and precision.weights == torch.float32
    if kernel in HALF_PRECISION_KERNELS and float32:
        logger.info(
            "%s: trained with %s, which computes in bf16/fp16 only; served in float32 with sdpa", folder, kernel
        )
        kernel = "sdpa"
    return ModelLoading(trust_remote_code=options.trust_remote_code, attn_implementation=kernel)


def _load_encoder(folder: str, options: LoadOptions) -> LoadedModel:
    """An encoder's `best/`: its float32 weights (every one trained), under the autocast its fold predicted with
    (`dtype="auto"`) or the one asked for."""
    if options.load_in_4bit:
        raise PipelineError(
            f"{folder}: load_in_4bit applies to a decoder's LoRA adapter; an encoder keeps float32 "
            "weights (use dtype bf16 or fp16 for autocast)"
        )
    record = LoadRecord.load(folder)
    precision = serving_precision(record, options, half_weights=False)
    model, info = load_trained_model(
        folder, dtype=precision.weights, **serving_loading(folder, record, options, precision).model_kwargs()
    )
    return LoadedModel(model, list(info["missing_keys"]), precision.autocast)


class CheckpointClassifier:
    """Tokenizer + preprocessing settings + a runtime; see the module docstring."""

    def __init__(
        self,
        runtime: Runtime,
        tokenizer: PreTrainedTokenizerBase,
        preprocessing: Preprocessing,
        source: str | None = None,
    ):
        self.runtime = runtime
        self.tokenizer = tokenizer
        self.preprocessing = preprocessing
        self.source = source

    @classmethod
    def from_pretrained(
        cls,
        folder: str | os.PathLike,
        *,
        device: torch.device | str | None = None,
        threads: int | None = None,
        loader=_load_encoder,
        options: LoadOptions | None = None,
    ) -> CheckpointClassifier:
        """An encoder's `best/` folder written by train.py (PyTorch, on `device`, default the GPU when there is one)
        or an export.py folder (ONNX Runtime on CPU, `threads` intra-op threads): the encoder backend's loader.
        `options` (precision.LoadOptions): the dtype (default auto: as its run trained), 4-bit, remote code.
        Refuses folders with other labels, no tokenizer files or damaged weights, naming the folder.
        (`backends.registry.load_checkpoint` loads any backend's checkpoint; `nikl_emotion.EmotionClassifier` also
        opens a finished run or a stack folder.)"""
        folder = os.fspath(folder)
        options = options or LoadOptions()
        if not os.path.isdir(folder):
            raise PipelineError(f"{folder}: checkpoint folder not found")
        preprocessing = Preprocessing.load(folder)
        if folder_kind(folder) == "post-training":
            _refuse_untrained_head(folder, "a post_train.py model folder")
        _check_tokenizer_files(folder)
        onnx = is_onnx_export(folder)
        kind = "export" if onnx else "checkpoint"
        try:
            tokenizer = load_tokenizer(
                folder,
                fix_hangul=False,  # exactly as in training
                loading=ModelLoading(trust_remote_code=options.trust_remote_code),
            )
            if onnx:
                with open(os.path.join(folder, EXPORT_FILE), encoding="utf-8") as handle:
                    json.load(handle)  # present and readable: the folder was written whole
                config, runtime = AutoConfig.from_pretrained(folder), OnnxRuntime(folder, threads)
            else:
                loaded = loader(folder, options)
                if loaded.missing_keys:
                    missing = sorted(loaded.missing_keys)
                    _refuse_untrained_head(folder, f"{len(missing)} classifier weights missing, e.g. {missing[0]}")
                model = loaded.model
                config = model.config
                runtime = TorchRuntime(
                    model, _model_inputs(model, tokenizer), device or default_device(), loaded.autocast
                )
        except PipelineError:
            raise
        except Exception as exc:  # a damaged folder: bad config.json, truncated weights or graph, unreadable tokenizer
            raise PipelineError(f"{folder}: cannot load the {kind} ({type(exc).__name__}: {first_line(exc)})") from None
        _check_head(folder, config, preprocessing)
        labels = {int(k): v for k, v in config.id2label.items()}
        if labels != ID2LABEL:
            raise PipelineError(f"{folder}: the {kind}'s labels {labels} differ from this pipeline's {ID2LABEL}")
        return cls(runtime, tokenizer, preprocessing, source=folder)

    @classmethod
    def from_model(
        cls,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        preprocessing: Preprocessing,
        device: torch.device | str | None = None,
        autocast: torch.dtype | None = None,
    ) -> CheckpointClassifier:
        """A classifier over a model in memory (e.g. the one a fold has just trained, under its run's autocast), on
        its own device."""
        return cls(TorchRuntime(model, _model_inputs(model, tokenizer), device, autocast), tokenizer, preprocessing)

    @property
    def model(self) -> PreTrainedModel | None:
        """The PyTorch model (None for an ONNX export)."""
        return getattr(self.runtime, "model", None)

    @property
    def is_onnx(self) -> bool:
        return isinstance(self.runtime, OnnxRuntime)

    @property
    def reads_text(self) -> bool:
        """Whether the runtime takes cleaned text (the n-gram member) rather than token batches."""
        return getattr(self.runtime, "reads_text", False)

    def encode(self, rows: Rows, on_unknown: str = "warn") -> Dataset:
        """Rows cleaned and tokenized as in training: `encode(clean(rows))` with this checkpoint's settings."""
        if self.reads_text:
            raise PipelineError(f"{self.source}: an n-gram model reads text, not tokens: use predict_proba")
        return encode(
            clean(as_rows(rows), self.preprocessing), self.tokenizer, self.preprocessing, on_unknown=on_unknown
        )

    def predict_proba(self, rows: Rows, *, batch_size: int = 128, progress: bool = False) -> np.ndarray:
        """Sigmoid probabilities (rows, 8) in the rows' order, labels in `LABELS` order.

        `rows`: a NIKL jsonl path, a dataset from `data.load_jsonl`, task rows as dicts (`{"id", "input": {"form",
        "target"}}`; one dict is one row) or plain texts (no target)."""
        if self.reads_text:
            return self.runtime.predict_rows(clean(as_rows(rows), self.preprocessing))
        return self.predict_encoded(self.encode(rows), batch_size=batch_size, progress=progress)

    def predict(
        self, rows: Rows, *, threshold: float | Sequence[float] = 0.5, fallback: bool = True, batch_size: int = 128
    ) -> np.ndarray:
        """Decisions (rows, 8): probability >= threshold (one or one per label); with `fallback`, a row with no label
        gets its most probable one (every gold row has at least one)."""
        return decide(
            self.predict_proba(rows, batch_size=batch_size), np.asarray(threshold, dtype=np.float64), fallback
        )

    def predict_encoded(self, encoded: Dataset, *, batch_size: int = 128, progress: bool = False) -> np.ndarray:
        """Probabilities of already encoded rows (`encode`'s output, with its `length` column), in their order."""
        return sigmoid(self.predict_logits(encoded, batch_size=batch_size, progress=progress))

    def predict_logits(
        self, encoded: Dataset, *, batch_size: int = 128, progress: bool = False, part: int = 0, parts: int = 1
    ) -> np.ndarray:
        """Logits (rows, 8) of encoded rows, in their order.

        Batches are cut from the rows sorted by length, longest first (little padding; an out-of-memory shows at
        once), padded with numpy from Arrow. With `parts` > 1 only every `parts`-th batch from `part` is run and the
        other rows stay 0, so processes that each run one part and sum the arrays get every row exactly once. Every
        part runs as many forward passes as the largest (a part one short reruns its last batch, or the first, and
        drops the result): where the weights are split across the processes (ZeRO-3, FSDP) a forward pass is a
        collective, and a process that stopped early would leave the others waiting."""
        if batch_size < 1:
            raise PipelineError(f"batch size must be at least 1, got {batch_size}")
        columns = [name for name in self.runtime.input_names if name in encoded.column_names]
        missing = [name for name in self.runtime.input_names if name not in columns]
        if missing:
            raise PipelineError(f"the encoded rows lack the model inputs {', '.join(missing)}")
        order = length_order(encoded)
        arrow_rows = encoded.select_columns(columns).with_format("arrow")  # one Arrow `take` per batch
        logits = np.zeros((len(encoded), NUM_LABELS), dtype=np.float32)
        starts = list(range(part * batch_size, len(order), parts * batch_size))
        steps = -(-len(order) // (parts * batch_size))  # the largest part's number of batches
        for step in tqdm(range(steps), desc="predicting", unit="batch", disable=not progress, leave=False):
            start = starts[min(step, len(starts) - 1)] if starts else 0
            index = order[start : start + batch_size]
            batch = pad_table(
                arrow_rows[index.tolist()], columns, self.tokenizer.pad_token_id, self.runtime.pad_to_multiple_of
            )
            batch_logits = self.runtime(batch)
            if step < len(starts):  # an extra pass keeps the processes in step; its rows are another part's
                logits[index] = batch_logits
        return logits


def _model_inputs(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """The inputs a model's forward takes: its tokenizer's, and those its head reads (`target_pool`: the target
    mask)."""
    return [*tokenizer.model_input_names, *head_inputs(model)]


def _check_head(folder: str, config, preprocessing: Preprocessing) -> None:
    """The model's head and the preprocessing saved beside it must agree: a `target_pool` head without target masks
    would pool the whole text, silently."""
    if head_of(config) != preprocessing.classifier_head:
        raise PipelineError(
            f"{folder}: config.json's classifier_head is {head_of(config)} but preprocessing.json's is "
            f"{preprocessing.classifier_head}; the folder mixes two checkpoints' files"
        )


def _refuse_untrained_head(folder: str, what: str) -> None:
    """A folder without trained classifier weights (a post_train.py encoder, a hub backbone) would predict with a
    randomly initialised head: refuse it, saying what to do."""
    raise PipelineError(
        f"{folder}: {what}: an encoder to fine-tune, not a trained classifier; train one first: "
        f"python train.py CONFIG --model_name_or_path {folder}"
    )


def is_onnx_export(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, ONNX_FILE))


def require(module: str):
    """Import an optional dependency of ONNX export and inference, with the install line when it is missing."""
    try:
        return __import__(module)
    except ImportError:
        raise PipelineError(f"ONNX export and inference need {module}: pip install onnx onnxruntime") from None


def _check_tokenizer_files(path: str) -> None:
    """Without its tokenizer files a folder still "loads" a tokenizer of special tokens only, and every word of
    every row becomes the unknown token: refuse it instead."""
    if not any(os.path.isfile(os.path.join(path, name)) for name in TOKENIZER_FILES):
        raise PipelineError(
            f"{path}: no tokenizer files (one of {', '.join(TOKENIZER_FILES)}); copy the tokenizer "
            "that was saved with the checkpoint into the folder"
        )


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:300]


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
