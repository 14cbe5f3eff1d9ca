"""Precision, in one place: the dtype a model's weights are loaded in, which weights train in float32, the autocast a
forward pass runs under, in training and when a saved `best/` is served. The same rule for encoders and decoders,
every head, full fine-tuning and LoRA:

- Trainable weights are float32, whatever dtype the checkpoint ships in (Llama, Qwen2, Gemma, EXAONE save bf16,
  polyglot-ko derivatives fp16). transformers 5 loads a checkpoint in its saved dtype unless told otherwise, so
  every load here names one: a 2e-5 step leaves most bf16 weights of N(0, 0.02) where they were, and the fp16
  gradient scaler refuses fp16 weights.
- `bf16` / `fp16` (TrainingArguments) mean autocast: float32 weights, matrix products in half precision. Under
  DeepSpeed they mean half-precision weights instead (the engine casts the module and keeps float32 copies in its
  optimizer), and a launcher's `--mixed_precision` means autocast with neither set: `best/` records what ran.
- A frozen base is kept in half precision only where that is the point: under LoRA with `bf16`/`fp16` (that dtype,
  or `model_dtype`), and 4-bit NF4 under QLoRA (with that compute dtype).
- `best/` records how its base was loaded and the autocast its fold predicted under (`loading.json`, a `LoadRecord`);
  served with `dtype="auto"` (inference.py's default) it runs the same way, so it reproduces the fold's own
  probabilities and the thresholds tuned on them still apply.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import importlib.util
import json
import os
from dataclasses import dataclass

import torch

from nikl_emotion.base.checkpoint_files import LOADING_FILE
from nikl_emotion.base.config import ModelLoading
from nikl_emotion.base.errors import PipelineError
from nikl_emotion.base.fileio import write_json_atomic
from nikl_emotion.base.vocabulary import INFERENCE_DTYPES, check_choice

__all__ = [
    "HALF_PRECISION_KERNELS",
    "TORCH_DTYPES",
    "training_autocast",
    "check_autocast_device",
    "autocast_dtype",
    "ran_autocast",
    "engine_weights_dtype",
    "base_dtype_name",
    "upcast_trainable",
    "autocast_context",
    "LoadRecord",
    "LoadOptions",
    "ServingPrecision",
    "serving_precision",
    "nf4_settings",
    "require_4bit",
    "four_bit_device_map",
    "bits_and_bytes_config",
]

# the attention kernels that compute in bf16/fp16 only: float32 tensors reaching them crash the forward pass
HALF_PRECISION_KERNELS = ("flash_attention_2", "flash_attention_3")


TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_AUTOCAST_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}  # a mixed-precision flag -> the dtype it computes in
_QLORA_INSTALL = "pip install .[qlora] (bitsandbytes)"


def training_autocast(training_args) -> str | None:
    """The autocast a run trains (and predicts its folds) under: bf16, fp16 or None."""
    return "bf16" if training_args.bf16 else "fp16" if training_args.fp16 else None


def check_autocast_device(training_args, engine_casts_weights: bool) -> None:
    """`fp16: true` on a CPU: accelerate applies fp16 autocast on GPUs only, so the run would train in float32 while
    its settings said fp16 (DeepSpeed, which casts the weights instead, is not concerned)."""
    if training_args.fp16 and training_args.device.type == "cpu" and not engine_casts_weights:
        raise PipelineError(
            "fp16: accelerate runs fp16 autocast on a GPU only; on this CPU the run would train in float32; "
            "use bf16: true (CPUs run bf16 autocast) or leave fp16 off"
        )


def ran_autocast(accelerator) -> str | None:
    """The autocast a fold's forward pass actually ran under: the accelerator's mixed precision where it wraps the
    model in autocast (the run's `bf16`/`fp16`, or `accelerate launch --mixed_precision` with neither set); None
    under DeepSpeed, which casts the weights instead (`engine_weights_dtype`), and for fp16 on a CPU, which
    accelerate leaves off."""
    mixed = accelerator.mixed_precision
    return mixed if accelerator.native_amp and mixed in _AUTOCAST_DTYPES else None


def engine_weights_dtype(model: torch.nn.Module) -> str | None:
    """The half dtype an engine holds the trainable weights in (DeepSpeed's bf16/fp16 casts the module and keeps
    float32 copies in its optimizer), or None where they are float32 as this pipeline loads them."""
    dtypes = {p.dtype for p in model.parameters() if p.requires_grad and p.is_floating_point()}
    names = {name for name, dtype in TORCH_DTYPES.items() if dtype in dtypes}
    return next(iter(names)) if len(names) == 1 and names != {"float32"} else None


def autocast_dtype(autocast: str | None) -> torch.dtype | None:
    return None if autocast is None else TORCH_DTYPES[_AUTOCAST_DTYPES[autocast]]


def base_dtype_name(model_args, training_args, frozen_base: bool) -> str:
    """The dtype a checkpoint's weights are loaded in for training: float32 for weights that train; a frozen base in
    `model_dtype`, or (auto) the autocast's dtype."""
    if not frozen_base:
        return "float32"
    if model_args.model_dtype != "auto":
        return model_args.model_dtype
    autocast = training_autocast(training_args)
    return "float32" if autocast is None else _AUTOCAST_DTYPES[autocast]


def upcast_trainable(model: torch.nn.Module) -> int:
    """Every trainable parameter in float32 (a head or adapter created beside half-precision base weights takes
    their dtype); returns how many were cast."""
    cast = 0
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.is_floating_point() and parameter.dtype != torch.float32:
            parameter.data = parameter.data.float()
            cast += 1
    return cast


def autocast_context(device: torch.device, dtype: torch.dtype | None):
    """Autocast to `dtype` on `device` (None: none); CPUs run bf16 and fp16 autocast too."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@dataclass(frozen=True)
class LoadRecord:
    """How a `best/` was made, saved beside it as `loading.json`: the dtype of the weights under the trained ones
    (a LoRA base; float32 where everything trained or was merged), the autocast its fold predicted under, 4-bit
    quantization (the BitsAndBytesConfig as a dict) and the model-loading keys. A checkpoint written before the
    record existed reads as float32 with no autocast, which is how those runs trained on CPU."""

    base_dtype: str = "float32"
    autocast: str | None = None
    load_in_4bit: bool = False
    quantization: dict | None = None
    trust_remote_code: bool = False
    attn_implementation: str | None = None
    revision: str | None = None

    @classmethod
    def for_training(cls, model_args, training_args, frozen_base: bool, quantization: dict | None = None) -> LoadRecord:
        loading: ModelLoading = model_args.loading
        return cls(
            base_dtype=base_dtype_name(model_args, training_args, frozen_base),
            autocast=training_autocast(training_args),
            load_in_4bit=bool(model_args.load_in_4bit and frozen_base),
            quantization=quantization,
            **dataclasses.asdict(loading),
        )

    def as_ran(self, accelerator, model: torch.nn.Module) -> LoadRecord:
        """This record corrected by what the fold's forward pass ran with: the autocast the accelerator applied, the
        weights' dtype where an engine cast the trained weights to half precision (served so, with no autocast, the
        checkpoint reproduces the fold's probabilities), and the attention kernel the model was built with."""
        half = engine_weights_dtype(model)
        kernel = self.attn_implementation and getattr(model.config, "_attn_implementation", None)
        return dataclasses.replace(
            self,
            autocast=ran_autocast(accelerator),
            base_dtype=self.base_dtype if half is None else half,
            attn_implementation=kernel or None,  # the kernel that ran (an offline backbone takes none asked)
        )

    def save(self, folder: str) -> None:
        write_json_atomic(os.path.join(folder, LOADING_FILE), dataclasses.asdict(self))

    @classmethod
    def load(cls, folder: str) -> LoadRecord:
        path = os.path.join(folder, LOADING_FILE)
        if not os.path.isfile(path):
            return cls()
        try:
            with open(path, encoding="utf-8") as handle:
                values = json.load(handle)
            known = {f.name for f in dataclasses.fields(cls)}
            return cls(**{key: value for key, value in values.items() if key in known})
        except (OSError, ValueError, TypeError) as exc:
            raise PipelineError(f"{path}: cannot read how the checkpoint was loaded ({exc})") from None


@dataclass(frozen=True)
class LoadOptions:
    """How to load a saved checkpoint to predict: `dtype` auto (as its run trained: `loading.json`), fp32, bf16 or
    fp16 (autocast; a decoder's weights also held in it); `load_in_4bit`, a LoRA adapter's base in 4-bit NF4
    (bitsandbytes); `trust_remote_code`, run modelling code the checkpoint ships (never assumed from its files)."""

    dtype: str = "auto"
    load_in_4bit: bool = False
    trust_remote_code: bool = False

    def __post_init__(self):
        check_choice("dtype", self.dtype, INFERENCE_DTYPES)


@dataclass(frozen=True)
class ServingPrecision:
    """What a checkpoint is served with: the dtype of its large weights (a decoder's base or merged weights; trained
    heads and adapters stay float32), the autocast, and 4-bit quantization (a dict for BitsAndBytesConfig) or None."""

    weights: torch.dtype
    autocast: torch.dtype | None
    quantization: dict | None = None


def serving_precision(record: LoadRecord, options: LoadOptions, half_weights: bool) -> ServingPrecision:
    """`options` applied to what `record` says: `auto` as trained; fp32 none of it; bf16/fp16 autocast (and, with
    `half_weights`, a decoder's weights in that dtype). 4-bit where asked, or recorded and `auto`."""
    if options.dtype == "auto":
        weights, autocast = record.base_dtype, autocast_dtype(record.autocast)
    elif options.dtype == "fp32":
        weights, autocast = "float32", None
    else:
        autocast = autocast_dtype(options.dtype)
        weights = _AUTOCAST_DTYPES[options.dtype] if half_weights else "float32"
    quantize = options.load_in_4bit or (options.dtype == "auto" and record.load_in_4bit)
    if not quantize:
        return ServingPrecision(TORCH_DTYPES[weights], autocast)
    # the 4-bit base computes in its recorded dtype (or the autocast's); that dtype is also the autocast's
    quantization = dict(record.quantization or nf4_settings(autocast or torch.bfloat16))
    compute = TORCH_DTYPES[str(quantization.get("bnb_4bit_compute_dtype", "bfloat16"))]
    return ServingPrecision(compute, autocast or compute, quantization)


def nf4_settings(compute: torch.dtype) -> dict:
    """QLoRA's 4-bit base: NF4, double quantization, the head kept out (it trains in full)."""
    return {
        "load_in_4bit": True,
        "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_use_double_quant": True,
        "bnb_4bit_compute_dtype": str(compute).removeprefix("torch."),
        "llm_int8_skip_modules": ["score"],
    }


def require_4bit(what: str, instead: str) -> None:
    """4-bit weights need bitsandbytes, and on a machine without CUDA one whose CPU backend runs them (>= 0.50:
    NF4 layers computing in bf16 on the CPU, measured with 0.50.2): one line saying what is missing and what to do
    instead."""
    if importlib.util.find_spec("bitsandbytes") is None:
        raise PipelineError(f"{what}: 4-bit base weights need bitsandbytes: {_QLORA_INSTALL}; {instead}")
    if torch.cuda.is_available():
        return
    installed = importlib.metadata.version("bitsandbytes")
    if _version_tuple(installed) < _CPU_4BIT:
        raise PipelineError(
            f"{what}: 4-bit base weights on a CPU need bitsandbytes >= 0.50 (its CPU backend), this machine has "
            f"{installed} and no CUDA GPU; {instead}"
        )


_CPU_4BIT = (0, 50)


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".")[:2] if part.isdigit())


def four_bit_device_map() -> dict:
    """Where a 4-bit base loads (bitsandbytes places its layers at load time): this process's own GPU (under
    accelerate launch each rank trains and serves on its own), or the CPU."""
    if torch.cuda.is_available():
        return {"": int(os.environ.get("LOCAL_RANK", 0))}
    return {"": "cpu"}


def bits_and_bytes_config(quantization: dict):
    """The BitsAndBytesConfig a 4-bit base is loaded with, from its recorded dict."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig.from_dict(dict(quantization))
