"""The decoder backend: a causal language model (GPT-NeoX as polyglot-ko, the Llama family, Qwen2, Gemma: every
`model_type` that `AutoModelForSequenceClassification` maps and that is not a masked LM) trained through the same
folds as a classifier on its last token that is not padding (transformers' rule for these models, so right-padded
batches are read correctly and the tokenizer's padding side does not matter).

- No pad token (Llama, GPT-NeoX): the end-of-sequence token pads, and the model's config learns its id.
- `lora_r > 0`: LoRA adapters (peft) on the family's attention and MLP projections (`_LORA_TARGETS`, or
  `lora_target_modules`), the classification head (`score`) trained in full; `best/` then holds the adapter, the head
  and `config.json`, and names the base model (`adapter_config.json`), or with `merge_lora` the merged weights.
- `load_in_4bit`: the frozen base in 4-bit NF4 (bitsandbytes; on a CPU its backend of >= 0.50): QLoRA.
- `gradient_checkpointing` (the TrainingArguments key) works with and without LoRA.
- Precision (precision.py): trained weights (everything in full fine-tuning; the adapters and the head under LoRA)
  are float32 whatever the checkpoint ships in; a frozen LoRA base is held in the bf16/fp16 autocast dtype or 4-bit.
  A saved adapter is served over its base loaded the same way, unmerged (a merge into half-precision weights would
  round them); `merge_lora` merges in float32.

Use `input_format: instruction` (the row as one Korean instruction naming the target, `input_template`): the last
token then has read the text, the target and the question.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json
import os
from typing import TYPE_CHECKING

import torch
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
)
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
)

from nikl_emotion.backends.backbone import (
    check_model_folder,
    classification_config_kwargs,
    fit_embeddings,
    model_config,
    raw_config,
)
from nikl_emotion.backends.classifier import CheckpointClassifier, LoadedModel, first_line, serving_loading
from nikl_emotion.backends.encoder_backend import EncoderBackend
from nikl_emotion.backends.precision import (
    TORCH_DTYPES,
    LoadOptions,
    LoadRecord,
    ServingPrecision,
    base_dtype_name,
    bits_and_bytes_config,
    four_bit_device_map,
    nf4_settings,
    require_4bit,
    serving_precision,
    upcast_trainable,
)
from nikl_emotion.base.checkpoint_files import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE
from nikl_emotion.base.config import ModelArguments, ModelLoading, RunSettings
from nikl_emotion.base.errors import PipelineError
from nikl_emotion.base.vocabulary import is_ngram, is_offline

if TYPE_CHECKING:
    from transformers import TrainingArguments

__all__ = [
    "new_decoder_model",
    "save_decoder",
    "DecoderBackend",
]


_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# every attention and MLP projection (QLoRA's finding: adapting all of them matches full fine-tuning best)
_LORA_TARGETS = {
    "gpt_neox": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    **{family: _PROJECTIONS for family in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text")},
}  # other families (fused projections such as phi3's qkv_proj): every linear layer but the head ("all-linear")


def _is_decoder_config(config: dict) -> bool:
    """A config.json (as a mapping, read without running any code) of a causal LM transformers classifies by its
    last token, or of a custom-code one (`_is_custom_decoder`)."""
    if _is_custom_decoder(config):
        return True
    model_type = config.get("model_type")
    return (
        model_type in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES
        and model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES
    )


def _is_custom_decoder(config: dict) -> bool:
    """A custom-code checkpoint (EXAONE 3.x and others: `auto_map` in config.json) that ships a causal LM and no
    masked LM, read without running its code."""
    auto_map = config.get("auto_map") or {}
    return "AutoModelForCausalLM" in auto_map and "AutoModelForMaskedLM" not in auto_map


def _require_peft():
    if importlib.util.find_spec("peft") is None:
        raise PipelineError("lora_r: LoRA needs peft: pip install peft (a dependency in requirements.txt)")
    import peft

    return peft


def _check_quantization(model_args: ModelArguments) -> None:
    """4-bit base weights need bitsandbytes (on a CPU, >= 0.50): refuse before any work, saying what is missing."""
    if model_args.load_in_4bit:
        require_4bit("load_in_4bit", "train with load_in_4bit: false (LoRA over full-precision weights)")


def _check_lora_targets(model_args: ModelArguments) -> None:
    """Each of `lora_target_modules` must name a module of the model (peft ignores one that matches nothing as long
    as another matches, and fails mid-fold when none does), checked on an empty (meta) copy before any work."""
    if not model_args.lora_target_modules:
        return
    config = model_config(model_args.model_name_or_path, model_args.loading)
    if config is None:
        return
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(config, trust_remote_code=model_args.trust_remote_code)
    names = [name for name, _ in model.named_modules()]
    for target in model_args.lora_target_modules:
        if not any(name == target or name.endswith(f".{target}") for name in names):
            linear = sorted(
                {
                    name.rsplit(".", 1)[-1]
                    for name, module in model.named_modules()
                    if isinstance(module, torch.nn.Linear)
                }
            )
            raise PipelineError(
                f"lora_target_modules: {target} names no module of {model_args.model_name_or_path}; "
                f"its linear layers are {', '.join(linear)}"
            )


def _lora_targets(model_type: str, chosen: list[str]) -> list[str] | str:
    return list(chosen) or _LORA_TARGETS.get(model_type, "all-linear")  # peft: every linear layer but the head


def _training_quantization(model_args: ModelArguments, training_args: TrainingArguments) -> dict | None:
    """QLoRA's 4-bit base (a dict for BitsAndBytesConfig, as best/ records it), computing in the autocast dtype."""
    if not model_args.load_in_4bit:
        return None
    return nf4_settings(torch.bfloat16 if training_args.bf16 else torch.float16)


def _quantization_settings(model_args: ModelArguments, training_args: TrainingArguments) -> dict:
    """from_pretrained keywords: the dtype precision.py names (float32 weights to train; a frozen LoRA base in the
    autocast dtype), or 4-bit NF4 base weights on this process's GPU."""
    dtype = TORCH_DTYPES[base_dtype_name(model_args, training_args, frozen_base=bool(model_args.lora_r))]
    quantization = _training_quantization(model_args, training_args)
    if quantization is None:
        return {"dtype": dtype}
    return {
        "quantization_config": bits_and_bytes_config(quantization),
        "dtype": dtype,
        "device_map": four_bit_device_map(),
    }


def new_decoder_model(
    backbone: str, tokenizer, model_args: ModelArguments, training_args: TrainingArguments
) -> PreTrainedModel:
    """The decoder as a classifier with the task's labels, its pad id the tokenizer's; LoRA-wrapped with `lora_r`.
    Whatever dtype the checkpoint ships in, what trains is float32 (precision.py)."""
    backbone = os.path.abspath(backbone) if os.path.isdir(backbone) else backbone  # the adapter names its base by it
    loading = model_args.loading
    config = AutoConfig.from_pretrained(
        backbone, **loading.hub_kwargs(), **classification_config_kwargs(), pad_token_id=tokenizer.pad_token_id
    )
    model = AutoModelForSequenceClassification.from_pretrained(
        backbone, config=config, **loading.model_kwargs(), **_quantization_settings(model_args, training_args)
    )
    fit_embeddings(model, tokenizer)
    if not model_args.lora_r:
        return model  # loaded in float32: every weight trains
    peft = _require_peft()
    if model_args.load_in_4bit:
        model = peft.prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=training_args.gradient_checkpointing
        )
    elif training_args.gradient_checkpointing:
        model.enable_input_require_grads()  # frozen embeddings: checkpointed blocks still need an input with a grad
    lora = peft.LoraConfig(
        task_type=peft.TaskType.SEQ_CLS,
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=_lora_targets(config.model_type, model_args.lora_target_modules),
    )
    model = peft.get_peft_model(model, lora)
    upcast_trainable(model)  # the head's trained copy was made in the base's dtype
    return model


def _is_adapter_folder(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, ADAPTER_CONFIG_FILE))


def save_decoder(model, tokenizer, path: str, merge: bool, weights: dict | None = None) -> None:
    """best/: the adapter with the head and config.json (naming the base, without the 4-bit quantization the base
    was trained under: loading.json records it), or the merged model (merged in float32); the tokenizer. `weights`:
    a fully fine-tuned model's whole state dict where an engine split it across the processes."""
    if not hasattr(model, "peft_config"):
        model.save_pretrained(path, state_dict=weights)
    elif merge:  # after the fold's predictions: the merge changes the model; float32 first, so nothing is rounded
        model.float().merge_and_unload().save_pretrained(path)
    else:
        model.save_pretrained(path)
        config = copy.deepcopy(model.get_base_model().config)
        for key in ("quantization_config", "_pre_quantization_dtype"):
            if hasattr(config, key):
                delattr(config, key)
        config.save_pretrained(path)
    tokenizer.save_pretrained(path)


def _load_decoder_model(folder: str, options: LoadOptions | None = None) -> LoadedModel:
    """A decoder checkpoint: full or merged weights (in the dtype `options` and loading.json give), or the base
    model named in adapter_config.json loaded as in training with the adapter and the float32 head over it."""
    options = options or LoadOptions()
    record = LoadRecord.load(folder)
    precision = serving_precision(record, options, half_weights=True)
    loading = serving_loading(folder, record, options, precision)
    if not _is_adapter_folder(folder):
        if os.path.isfile(os.path.join(folder, ADAPTER_WEIGHTS_FILE)):
            raise PipelineError(
                f"{folder}: holds a LoRA adapter ({ADAPTER_WEIGHTS_FILE}) but no {ADAPTER_CONFIG_FILE}, "
                "which names its base model and settings; copy it back from the run's fold"
            )
        if options.load_in_4bit:
            raise PipelineError(
                f"{folder}: load_in_4bit applies to a LoRA adapter's base; this checkpoint holds "
                "full weights (use dtype bf16 or fp16 to halve its memory)"
            )
        model, info = AutoModelForSequenceClassification.from_pretrained(
            folder, output_loading_info=True, dtype=precision.weights, **loading.model_kwargs()
        )
        return LoadedModel(model, list(info["missing_keys"]), precision.autocast)
    return _load_adapter(folder, record, precision, loading)


def _load_adapter(folder: str, record: LoadRecord, precision: ServingPrecision, loading: ModelLoading) -> LoadedModel:
    """The adapter's base loaded as `precision` says (4-bit over the recorded BitsAndBytesConfig), the head it
    trained in full made float32 before the adapter's weights fill it, the adapter kept unmerged unless the base is
    float32 (a merge into half-precision weights rounds them)."""
    peft = _require_peft()
    adapter = _read_adapter_config(folder)
    base = adapter.get("base_model_name_or_path")
    base_loading = dataclasses.replace(loading, revision=record.revision)  # the base at the revision it trained on
    kwargs = {"dtype": precision.weights, **base_loading.model_kwargs()}
    if precision.quantization is not None:
        require_4bit(
            f"{folder}: its LoRA base in 4-bit", "load the base in full precision instead: dtype bf16 (or fp32)"
        )
        kwargs.update(
            quantization_config=bits_and_bytes_config(precision.quantization), device_map=four_bit_device_map()
        )
    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=loading.trust_remote_code)
        model = AutoModelForSequenceClassification.from_pretrained(base, config=config, **kwargs)
        fit_embeddings(model, AutoTokenizer.from_pretrained(folder))  # tokens added in training: the adapter holds them
    except OSError as exc:
        raise PipelineError(
            f"{folder}: holds a LoRA adapter over the base model {base}, which cannot be loaded "
            f"({first_line(exc)}); put it there, or train with merge_lora: true"
        ) from None
    if precision.quantization is not None:
        # as in training (new_decoder_model): every weight outside the 4-bit layers (embeddings, norms) in float32
        model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    heads = [name for name in adapter.get("modules_to_save") or [] if hasattr(model, name)]
    missing = _missing_head(folder, heads)
    if missing:  # the base's random head would predict: the caller refuses the folder
        return LoadedModel(model, missing, precision.autocast)
    for name in heads:
        getattr(model, name).float()  # as it trained; its saved float32 weights are then loaded without rounding
    model = peft.PeftModel.from_pretrained(model, folder)
    if precision.weights == torch.float32 and precision.quantization is None:
        model = model.merge_and_unload()  # exact in float32, and a plain model runs faster
    return LoadedModel(model, [], precision.autocast)


def _read_adapter_config(folder: str) -> dict:
    with open(os.path.join(folder, ADAPTER_CONFIG_FILE), encoding="utf-8") as handle:
        return json.load(handle)


def _saved_adapter_keys(folder: str) -> list[str]:
    """The weight names an adapter folder holds, read from the safetensors header (peft reads the tensors once, when
    it loads them); an `adapter_model.bin` is read whole."""
    path = os.path.join(folder, ADAPTER_WEIGHTS_FILE)
    if os.path.isfile(path):
        from safetensors import safe_open

        with safe_open(path, framework="pt") as handle:
            return list(handle.keys())
    import peft

    return list(peft.utils.load_peft_weights(folder, device="cpu"))


def _missing_head(folder: str, heads: list[str]) -> list[str]:
    """The head's weight names when the adapter file lacks them (the head would be the base's random one): the
    untrained-head guard, for adapters."""
    saved = _saved_adapter_keys(folder)
    found = [name for name in heads if any(f".{name}." in key or key.startswith(f"{name}.") for key in saved)]
    return [] if found else [f"{name}.weight" for name in heads or ["score"]]


class DecoderBackend(EncoderBackend):
    """Every `model_name_or_path` whose config is a causal LM's (a local folder, or a hub name once cached)."""

    name = "decoder"
    # no encoder fine-tuning techniques, HP search, MLM post-training, student role or ONNX export (yet)
    supports_techniques = False
    supports_multi_process = True
    heads = ("cls",)  # the model's own head on the last token

    def search_trials(self) -> None:
        return None

    def post_trainer(self) -> None:
        return None

    def student(self) -> None:
        return None

    def onnx_exporter(self) -> None:
        return None

    def matches(self, model_name_or_path: str) -> bool:
        if is_offline(model_name_or_path) or is_ngram(model_name_or_path):
            return False
        return _is_decoder_config(raw_config(model_name_or_path))

    def check_spec(self, model_name_or_path: str) -> None:
        check_model_folder(model_name_or_path)

    def pretokenizer_of(self, model_name_or_path: str) -> str | None:
        return "none"

    def check_lora(self, model_args: ModelArguments) -> None:
        _require_peft()
        _check_quantization(model_args)
        _check_lora_targets(model_args)

    def new_model(self, backbone: str, tokenizer, settings: RunSettings, head: str = "cls") -> PreTrainedModel:
        return new_decoder_model(backbone, tokenizer, settings.model, settings.training)

    def save_model(self, model, tokenizer, path: str, model_args: ModelArguments, weights: dict | None = None) -> None:
        save_decoder(model, tokenizer, path, model_args.merge_lora, weights)

    def owns_checkpoint(self, folder: str) -> bool:
        return _is_adapter_folder(folder) or _is_decoder_config(raw_config(folder))

    def load_checkpoint(
        self, folder: str, device=None, threads: int | None = None, options: LoadOptions | None = None
    ) -> CheckpointClassifier:
        return CheckpointClassifier.from_pretrained(
            folder, device=device, threads=threads, loader=_load_decoder_model, options=options
        )

    def load_record(self, model_args: ModelArguments, training_args: TrainingArguments) -> LoadRecord:
        """Full fine-tuning and merged adapters: float32 weights; an adapter: its base as it was held in training."""
        frozen_base = bool(model_args.lora_r) and not model_args.merge_lora
        return LoadRecord.for_training(
            model_args,
            training_args,
            frozen_base,
            _training_quantization(model_args, training_args) if frozen_base else None,
        )
