"""ONNX export of a checkpoint (optionally int8, dynamically quantized) for CPU inference with onnxruntime: the
output folder checked and written whole, the graph by the checkpoint's backend's exporter (`onnx_exporter()`;
the encoder's is `onnx_export.py`).

An export folder holds `model.onnx` plus what prediction needs besides the weights: the tokenizer,
`config.json` (labels), `preprocessing.json` (cleaning and input format) and `export.json`.
`EmotionClassifier.from_pretrained(EXPORT_DIR)` (and so `inference.py --checkpoint EXPORT_DIR`) predicts with it
exactly as with the PyTorch checkpoint (same cleaning, same sorted batches, same output files). `onnx` and
`onnxruntime` are needed for ONNX only.
"""

from __future__ import annotations

import os

from nikl_emotion.backends.classifier import is_onnx_export, require
from nikl_emotion.backends.registry import checkpoint_backend, offered
from nikl_emotion.base.errors import PipelineError
from nikl_emotion.base.fileio import atomic_folder, check_writable_location
from nikl_emotion.folders.folder_kind import OWN_NAMES, check_output_folder, is_ignorable, mark_folder

__all__ = [
    "export_checkpoint",
    "check_export_target",
]


_OPSET = 17


def export_checkpoint(checkpoint: str, output_dir: str, int8: bool = False, opset: int = _OPSET) -> dict:
    """Export `checkpoint` (a `best/` folder) to `output_dir`; with `int8`, the saved model is the dynamically
    quantized one (int8 weights of the linear layers, activations quantized at run time)."""
    check_export_target(checkpoint, output_dir)
    require("onnx")
    ort = require("onnxruntime")
    if is_onnx_export(checkpoint):
        raise PipelineError(f"{checkpoint}: already an ONNX export; export the best/ folder it was made from")
    refusal = f"{checkpoint}: ONNX export is for encoders; a {{backend}} checkpoint predicts as it is"
    exporter = offered(
        checkpoint_backend(checkpoint), "onnx_exporter", f"{refusal} (inference.py --checkpoint takes it)"
    )
    with atomic_folder(output_dir) as staging:  # the folder appears complete or not at all
        mark_folder(staging, "export")
        return {**exporter.export(checkpoint, staging, int8=int8, opset=opset), "onnxruntime": ort.__version__}


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
