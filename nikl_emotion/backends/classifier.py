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

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pyarrow as pa
import torch
from tqdm.auto import tqdm
from transformers import AutoConfig, PreTrainedModel, PreTrainedTokenizerBase

from nikl_emotion.backends.backbone import (
    attention_kernel_available,
    load_tokenizer,
    needs_remote_code,
)
from nikl_emotion.backends.heads import head_inputs, head_of, load_trained_model
from nikl_emotion.backends.precision import (
    HALF_PRECISION_KERNELS,
    LoadOptions,
    LoadRecord,
    ServingPrecision,
    autocast_context,
    serving_precision,
)
from nikl_emotion.base.checkpoint_files import EXPORT_FILE, ONNX_FILE, TOKENIZER_FILES, TOKENIZER_STATE_FILE
from nikl_emotion.base.config import ModelLoading
from nikl_emotion.base.errors import PipelineError
from nikl_emotion.base.fileio import file_digest, read_arrow, write_arrow
from nikl_emotion.base.labels import ID2LABEL, NUM_LABELS
from nikl_emotion.decisions.metrics import decide, sigmoid
from nikl_emotion.folders.folder_kind import folder_kind
from nikl_emotion.text.batching import MODEL_INPUTS, Padding, SortedBatches
from nikl_emotion.text.data import Rows, RowTable, as_rows
from nikl_emotion.text.preprocessing import Preprocessing, clean, encode

__all__ = [
    "CPU_CALL_TOKENS",
    "Runtime",
    "TorchRuntime",
    "OnnxRuntime",
    "LoadedModel",
    "SharedEncodings",
    "tokenizer_digest",
    "serving_loading",
    "CheckpointClassifier",
    "is_onnx_export",
    "require",
    "first_line",
    "default_device",
]


logger = logging.getLogger(__name__)
# a CPU forward call's fixed cost counted in padded tokens (bench/call_cost.py; BENCHMARKS.md, issue 47): batches of
# rows sorted by length are cut where padding a long row's width costs more than another call
CPU_CALL_TOKENS = 128


class Runtime(Protocol):
    """One padded batch (name -> int64 tensor) to logits (rows, labels)."""

    input_names: list[str]
    pad_to_multiple_of: int | None
    call_tokens: int | None  # text.batching.Padding's: a forward call's cost beyond its tokens, None on a GPU

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
        self.call_tokens = CPU_CALL_TOKENS if self.device.type == "cpu" else None
        if next(model.parameters()).device != self.device:
            model.to(self.device)

    def __call__(self, batch: dict[str, torch.Tensor]) -> np.ndarray:
        # switched only when needed: `train()`/`eval()` walk every module, ~2 ms a call, a request's whole overhead
        was_training = self.model.training
        if was_training:
            self.model.eval()
        try:
            with torch.inference_mode(), autocast_context(self.device, self.autocast):
                inputs = {name: batch[name].to(self.device) for name in self.input_names}
                return self.model(**inputs).logits.float().cpu().numpy()
        finally:
            if was_training:
                self.model.train()


class OnnxRuntime:
    """An export folder's `model.onnx` with onnxruntime on CPU."""

    pad_to_multiple_of = None
    call_tokens = CPU_CALL_TOKENS

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


class SharedEncodings:
    """The rows of one prediction, cleaned once per cleaning and encoded once per tokenizer and preprocessing, for
    every checkpoint that reads them: the folds of a run share one encoding, a stack's members one each. Rows in
    memory stay in memory (the small-batch path, no `datasets`); a file is a cached dataset. With `store` (a path
    prefix), in-memory results are read from disk when there (`<store>.<key hash>.arrow`) and, with `write`, kept
    there for checkpoints loaded later (streaming.py's chunks: one checkpoint in memory at a time; the last one
    writes nothing). `encodings` counts the tokenizations made."""

    def __init__(self, rows: Rows, store: str | None = None, write: bool = True):
        self.rows = as_rows(rows)
        self.store, self.write = store, write
        self.encodings = 0
        self._made: dict = {}

    @classmethod
    def of(cls, rows: Rows | SharedEncodings) -> SharedEncodings:
        return rows if isinstance(rows, cls) else cls(rows)

    def cleaned(self, preprocessing: Preprocessing) -> RowTable:
        key = ("cleaned", preprocessing.cleaning, preprocessing.pretokenizer)
        return self._kept(key, lambda: clean(self.rows, preprocessing))

    def encoded(self, classifier: CheckpointClassifier, on_unknown: str = "warn") -> RowTable:
        """The rows as `classifier` reads them; kept for the next classifier with the same `encoding_key`."""

        def make() -> RowTable:
            preprocessing = classifier.preprocessing
            self.encodings += 1
            return encode(self.cleaned(preprocessing), classifier.tokenizer, preprocessing, on_unknown=on_unknown)

        key = classifier.encoding_key
        return make() if key is None else self._kept(("encoded", *key), make)

    def batches(self, classifier: CheckpointClassifier, batch_size: int) -> SortedBatches:
        """The rows' sorted, padded batches for `classifier`; rows in memory (a request) are padded once for every
        checkpoint that pads them alike (a run's folds): what is left of a request besides its forward passes."""
        encoded = self.encoded(classifier)
        batches = SortedBatches(encoded, classifier.padding(encoded), batch_size)
        if classifier.encoding_key is None or not isinstance(encoded, pa.Table) or self.store is not None:
            return batches  # a file's chunk (stored): one checkpoint reads it, padded batch by batch
        key = ("padded", classifier.encoding_key, batches.padding, batch_size)
        if key not in self._made:
            self._made[key] = batches.held()
        return self._made[key]

    def _kept(self, key: tuple, make) -> RowTable:
        if key not in self._made:
            path = None if self.store is None else f"{self.store}.{_key_hash(key)}.arrow"
            if path is not None and os.path.isfile(path):
                self._made[key] = read_arrow(path)
            else:
                self._made[key] = made = make()
                if path is not None and self.write and isinstance(made, pa.Table):
                    write_arrow(path, made)
        return self._made[key]


def _key_hash(key: tuple) -> str:
    """A file name for an encoding's key (its settings' repr is stable: frozen dataclasses, strings, tuples)."""
    return hashlib.sha256(repr(key).encode("utf-8")).hexdigest()[:24]


def tokenizer_digest(folder: str) -> str:
    """One hash of a folder's tokenizer files: checkpoints whose tokenizers hash alike encode text alike."""
    names = sorted(name for name in os.listdir(folder) if TOKENIZER_STATE_FILE.fullmatch(name))
    return ",".join(f"{name}:{file_digest(os.path.join(folder, name))}" for name in names)


class CheckpointClassifier:
    """Tokenizer + preprocessing settings + a runtime; see the module docstring. `encoding_key`: what its encoding
    of rows depends on (tokenizer files, model inputs, preprocessing), so checkpoints with equal keys share one
    (`SharedEncodings`); None: never shared."""

    def __init__(
        self,
        runtime: Runtime,
        tokenizer: PreTrainedTokenizerBase,
        preprocessing: Preprocessing,
        source: str | None = None,
        encoding_key: tuple | None = None,
    ):
        self.runtime = runtime
        self.tokenizer = tokenizer
        self.preprocessing = preprocessing
        self.source = source
        self.encoding_key = encoding_key

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
        what = "export" if onnx else "checkpoint"
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
            raise PipelineError(f"{folder}: cannot load the {what} ({type(exc).__name__}: {first_line(exc)})") from None
        _check_head(folder, config, preprocessing)
        labels = {int(k): v for k, v in config.id2label.items()}
        if labels != ID2LABEL:
            raise PipelineError(f"{folder}: the {what}'s labels {labels} differ from this pipeline's {ID2LABEL}")
        key = (tokenizer_digest(folder), tuple(tokenizer.model_input_names), preprocessing)
        return cls(runtime, tokenizer, preprocessing, source=folder, encoding_key=key)

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

    def encode(self, rows: Rows, on_unknown: str = "warn") -> RowTable:
        """Rows cleaned and tokenized as in training: `encode(clean(rows))` with this checkpoint's settings; a
        dataset for a file or a dataset, an Arrow table for rows in memory."""
        if self.reads_text:
            raise PipelineError(f"{self.source}: an n-gram model reads text, not tokens: use predict_proba")
        return SharedEncodings(rows).encoded(self, on_unknown)

    def predict_proba(
        self, rows: Rows | SharedEncodings, *, batch_size: int = 128, progress: bool = False
    ) -> np.ndarray:
        """Sigmoid probabilities (rows, 8) in the rows' order, labels in `LABELS` order.

        `rows`: a NIKL jsonl path, a dataset from `data.load_jsonl`, task rows as dicts (`{"id", "input": {"form",
        "target"}}`; one dict is one row) or plain texts (no target); or `SharedEncodings` several checkpoints
        read."""
        shared = SharedEncodings.of(rows)
        if self.reads_text:
            return self.runtime.predict_rows(shared.cleaned(self.preprocessing))
        return sigmoid(self._run(shared.batches(self, batch_size), progress))

    def predict(
        self, rows: Rows, *, threshold: float | Sequence[float] = 0.5, fallback: bool = True, batch_size: int = 128
    ) -> np.ndarray:
        """Decisions (rows, 8): probability >= threshold (one or one per label); with `fallback`, a row with no label
        gets its most probable one (every gold row has at least one)."""
        return decide(
            self.predict_proba(rows, batch_size=batch_size), np.asarray(threshold, dtype=np.float64), fallback
        )

    def predict_encoded(self, encoded: RowTable, *, batch_size: int = 128, progress: bool = False) -> np.ndarray:
        """Probabilities of already encoded rows (`encode`'s output, with its `length` column), in their order."""
        return sigmoid(self.predict_logits(encoded, batch_size=batch_size, progress=progress))

    def predict_logits(
        self, encoded: RowTable, *, batch_size: int = 128, progress: bool = False, part: int = 0, parts: int = 1
    ) -> np.ndarray:
        """Logits (rows, 8) of encoded rows, in their order: run in `batching.SortedBatches` (length-sorted,
        padded per batch); with `parts` > 1 only this process's `part` of the batches, the other rows left 0, so
        processes that each run one part and sum the arrays get every row exactly once."""
        return self._run(SortedBatches(encoded, self.padding(encoded), batch_size, (part, parts)), progress)

    def padding(self, encoded: RowTable) -> Padding:
        """How this runtime's batches of `encoded` are padded; refuses rows that lack one of its inputs."""
        present = set(encoded.column_names)
        columns = tuple(name for name in self.runtime.input_names if name in present)
        missing = [name for name in self.runtime.input_names if name not in columns]
        if missing:
            raise PipelineError(f"the encoded rows lack the model inputs {', '.join(missing)}")
        runtime = self.runtime
        return Padding(columns, self.tokenizer.pad_token_id, runtime.pad_to_multiple_of, runtime.call_tokens)

    def _run(self, batches: SortedBatches, progress: bool = False) -> np.ndarray:
        logits = np.zeros((batches.rows, NUM_LABELS), dtype=np.float32)
        # a bar (even a disabled one) costs a request more than its padding
        bar = tqdm(batches, desc="predicting", unit="batch", leave=False) if progress else batches
        for index, batch, counts in bar:
            batch_logits = self.runtime(batch)
            if counts:  # an extra pass keeps the processes in step; its rows are another part's
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
