"""The encoder backend's ONNX exporter (`abilities.OnnxExporter`): the checkpoint's classifier traced to a float32
graph with dynamic batch and length axes (optionally int8, dynamically quantized linear layers), with the tokenizer,
`config.json` and `preprocessing.json` beside it, so `EmotionClassifier.from_pretrained` predicts with it exactly as
with the PyTorch checkpoint."""

from __future__ import annotations

import os

import pyarrow as pa
import torch

from nikl_emotion.backends.classifier import CheckpointClassifier
from nikl_emotion.backends.fold_backend import OnnxExporter
from nikl_emotion.backends.precision import LoadOptions, LoadRecord
from nikl_emotion.base.checkpoint_files import EXPORT_FILE, ONNX_FILE
from nikl_emotion.base.fileio import write_json_atomic
from nikl_emotion.text.batching import MODEL_INPUTS, pad_table
from nikl_emotion.text.encoding import tokenize_batch
from nikl_emotion.text.preprocessing import Preprocessing

__all__ = [
    "EncoderOnnxExporter",
]


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


class EncoderOnnxExporter(OnnxExporter):
    """A Hugging Face classifier (any head) traced by torch's TorchScript exporter."""

    def export(self, checkpoint: str, staging: str, *, int8: bool, opset: int) -> dict:
        # the graph is float32 (ONNX Runtime on CPU); a run trained under bf16/fp16 autocast is exported without it
        classifier = CheckpointClassifier.from_pretrained(checkpoint, device="cpu", options=LoadOptions(dtype="fp32"))
        classifier.model.eval()
        return _export(classifier, staging, source=checkpoint, int8=int8, opset=opset)


def _export(classifier: CheckpointClassifier, staging: str, *, source: str, int8: bool, opset: int) -> dict:
    model, tokenizer, preprocessing = classifier.model, classifier.tokenizer, classifier.preprocessing
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
    }
    write_json_atomic(os.path.join(staging, EXPORT_FILE), info)
    return info
