"""ONNX export of a checkpoint (optionally int8, dynamically quantized) and CPU inference with onnxruntime.

An export folder holds `model.onnx` plus what prediction needs besides the weights: the tokenizer,
`config.json` (labels), `preprocessing.json` (cleaning and input format) and `export.json`.
`EmotionClassifier.from_pretrained(EXPORT_DIR)` (and so `inference.py --checkpoint EXPORT_DIR`) predicts with it
exactly as with the PyTorch checkpoint (same cleaning, same sorted batches, same output files). `onnx` and
`onnxruntime` are needed for ONNX only.
"""

from __future__ import annotations

import os

import pyarrow as pa
import torch

from nikl_emotion.backends.classifier import CheckpointClassifier, is_onnx_export, require
from nikl_emotion.backends.precision import LoadOptions, LoadRecord
from nikl_emotion.backends.registry import checkpoint_backend
from nikl_emotion.base.checkpoint_files import EXPORT_FILE, ONNX_FILE
from nikl_emotion.base.errors import PipelineError
from nikl_emotion.base.fileio import atomic_folder, check_writable_location, write_json_atomic
from nikl_emotion.folders.folder_kind import OWN_NAMES, check_output_folder, is_ignorable, mark_folder
from nikl_emotion.text.batching import MODEL_INPUTS, pad_table
from nikl_emotion.text.encoding import tokenize_batch
from nikl_emotion.text.preprocessing import Preprocessing

__all__ = [
    "export_checkpoint",
    "check_export_target",
]


_OPSET = 17
# traced rows (cleaned-text columns, as tokenize_batch takes them): one with a target, one without
_TRACE_ROWS = {
    "text": ["오늘 공연 너무 좋았다", "정말 최고"],
    "target": ["공연", None],
    "target_begin": [3, None],
    "target_end": [5, None],
}


def _trace_sample(tokenizer, preprocessing: Preprocessing) -> dict[str, torch.Tensor]:
    """A padded batch in the checkpoint's own format (its input format, its tokenizer's model inputs: no
    token_type_ids for a model without segment embeddings), one row with a target and one without."""
    encoded = tokenize_batch(
        _TRACE_ROWS,
        tokenizer,
        preprocessing.input_format,
        preprocessing.max_seq_length,
        target_mask=preprocessing.marks_target,
        input_template=preprocessing.input_template,
    )
    names = [name for name in MODEL_INPUTS if name in encoded]
    return pad_table(pa.table({name: encoded[name] for name in names}), names, tokenizer.pad_token_id)


def export_checkpoint(checkpoint: str, output_dir: str, int8: bool = False, opset: int = _OPSET) -> dict:
    """Export `checkpoint` (a `best/` folder) to `output_dir`; with `int8`, the saved model is the dynamically
    quantized one (int8 weights of the linear layers, activations quantized at run time)."""
    check_export_target(checkpoint, output_dir)
    require("onnx")
    ort = require("onnxruntime")
    if is_onnx_export(checkpoint):
        raise PipelineError(f"{checkpoint}: already an ONNX export; export the best/ folder it was made from")
    backend = checkpoint_backend(checkpoint)
    if not backend.supports_onnx_export:
        raise PipelineError(
            f"{checkpoint}: ONNX export is for encoders; a {backend.name} checkpoint predicts as it "
            "is (inference.py --checkpoint takes it)"
        )
    # the graph is float32 (ONNX Runtime on CPU); a run trained under bf16/fp16 autocast is exported without it
    classifier = CheckpointClassifier.from_pretrained(checkpoint, device="cpu", options=LoadOptions(dtype="fp32"))
    classifier.model.eval()
    with atomic_folder(output_dir) as staging:  # the folder appears complete or not at all
        return _export(classifier, staging, source=checkpoint, int8=int8, opset=opset, ort=ort)


def check_export_target(checkpoint: str, output_dir: str) -> None:
    """`output_dir` may be new, empty, or a previous export (it holds export.json) that does not contain the
    checkpoint: `export.py` replaces only what it wrote itself, never a run folder or the current directory."""
    if not output_dir:
        raise PipelineError("--output: empty path")
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise PipelineError(f"{output_dir}: --output exists and is not a folder")
    check_writable_location(output_dir.rstrip(os.sep) or output_dir, "--output")
    target, source = os.path.realpath(output_dir), os.path.realpath(checkpoint)
    if source == target or source.startswith(target.rstrip(os.sep) + os.sep):
        raise PipelineError(f"{output_dir}: --output holds the checkpoint {checkpoint}; export to another folder")
    # an export may sit in the run (or student) folder it came from (OUT/fold_0/onnx): their --overwrite removes only
    # their own names
    check_output_folder(output_dir, "export", may_lie_in=("run", "fold", "distillation"), option="--output")
    # a previous export is replaced whole: only if it holds nothing but what export.py writes
    foreign = (
        sorted(name for name in os.listdir(output_dir) if not _is_export_file(name))
        if os.path.isdir(output_dir)
        else []
    )
    if foreign:
        raise PipelineError(
            f"{output_dir}: --output is a previous export that also holds {', '.join(foreign[:3])}; "
            "export.py replaces the whole folder: move those files, or export to another folder"
        )


def _is_export_file(name: str) -> bool:
    """A name export.py writes into its folder (the graph, its record, the tokenizer, config and preprocessing)."""
    return is_ignorable(name) or OWN_NAMES["export"](name)


def _export(classifier: CheckpointClassifier, staging: str, *, source: str, int8: bool, opset: int, ort) -> dict:
    model, tokenizer, preprocessing = classifier.model, classifier.tokenizer, classifier.preprocessing
    mark_folder(staging, "export")
    sample = _trace_sample(tokenizer, preprocessing)
    names = list(sample)
    fp32_path = os.path.join(staging, "model.fp32.onnx" if int8 else ONNX_FILE)
    axes = {name: {0: "batch", 1: "sequence"} for name in names} | {"logits": {0: "batch"}}
    with torch.inference_mode():
        # the TorchScript exporter: dynamic batch and length axes, no onnxscript needed
        # by name: a model without token_type_ids would take target_mask in that place positionally
        torch.onnx.export(
            model,
            (),
            fp32_path,
            kwargs={name: sample[name] for name in names},
            input_names=names,
            output_names=["logits"],
            dynamic_axes=axes,
            opset_version=opset,
            dynamo=False,
        )
    if int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(fp32_path, os.path.join(staging, ONNX_FILE), weight_type=QuantType.QInt8)
        os.remove(fp32_path)
    tokenizer.save_pretrained(staging)
    model.config.save_pretrained(staging)
    preprocessing.save(staging)
    info = {
        "source": os.path.abspath(source),
        "int8": int8,
        "opset": opset,
        "inputs": names,
        "dtype": "float32",
        "trained_autocast": LoadRecord.load(source).autocast,
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
    }
    write_json_atomic(os.path.join(staging, EXPORT_FILE), info)
    return info
