"""The decoder backend: a causal language model (GPT-NeoX as polyglot-ko, the Llama family, Qwen2, Gemma: every
`model_type` that `AutoModelForSequenceClassification` maps and that is not a masked LM) trained through the same
folds as a classifier on its last token that is not padding (transformers' rule for these models, so right-padded
batches are read correctly and the tokenizer's padding side does not matter).

- No pad token (Llama, GPT-NeoX): the end-of-sequence token pads, and the model's config learns its id.
- `lora_r > 0`: LoRA adapters (peft) on the family's attention and MLP projections (`LORA_TARGETS`, or
  `lora_target_modules`), the classification head (`score`) trained in full; `best/` then holds the adapter, the head
  and `config.json`, and names the base model (`adapter_config.json`), or with `merge_lora` the merged weights.
- `load_in_4bit`: the frozen base in 4-bit NF4 (bitsandbytes, CUDA only): QLoRA.
- `gradient_checkpointing` (the TrainingArguments key) works with and without LoRA.

Use `input_format: instruction` (the row as one Korean instruction naming the target, `input_template`): the last
token then has read the text, the target and the question.
"""

from __future__ import annotations

import importlib.util
import json
import os

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel, TrainingArguments
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES, MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
)

from nikl_emotion.backends.backbone import check_model_folder, classification_config_kwargs, fit_embeddings, model_config
from nikl_emotion.base.checkpoint_files import ADAPTER_CONFIG_FILE
from nikl_emotion.backends.classifier import CheckpointClassifier, first_line
from nikl_emotion.backends.encoder_backend import EncoderBackend
from nikl_emotion.base.config import ModelArguments, TechniqueArguments
from nikl_emotion.base.errors import PipelineError
from nikl_emotion.base.vocabulary import is_ngram, is_offline

PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# every attention and MLP projection (QLoRA's finding: adapting all of them matches full fine-tuning best)
LORA_TARGETS = {
    "gpt_neox": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    **{family: PROJECTIONS for family in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text")},
}  # other families (fused projections such as phi3's qkv_proj): every linear layer but the head ("all-linear")
QLORA_INSTALL = "pip install .[qlora] (bitsandbytes)"


def is_decoder_config(config) -> bool:
    model_type = getattr(config, "model_type", None)
    return (model_type in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES and model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
            and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES)


def require_peft():
    if importlib.util.find_spec("peft") is None:
        raise PipelineError("lora_r: LoRA needs peft: pip install peft (a dependency in requirements.txt)")
    import peft

    return peft


def check_quantization(model_args: ModelArguments) -> None:
    """4-bit base weights need CUDA and bitsandbytes: refuse before any work, saying which is missing."""
    if not model_args.load_in_4bit:
        return
    if not torch.cuda.is_available():
        raise PipelineError("load_in_4bit: 4-bit base weights (bitsandbytes) need a CUDA GPU, and this machine has "
                            "none; train with load_in_4bit: false (LoRA over full-precision weights)")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise PipelineError(f"load_in_4bit: needs bitsandbytes: {QLORA_INSTALL}")


def lora_targets(model_type: str, chosen: list[str]) -> list[str] | str:
    return list(chosen) or LORA_TARGETS.get(model_type, "all-linear")  # peft: every linear layer but the head


def quantization_settings(model_args: ModelArguments, training_args: TrainingArguments) -> dict:
    """from_pretrained keywords: 4-bit NF4 base weights on this process's GPU, or bf16 frozen weights under LoRA
    with `bf16` (half the memory; the adapters and the head stay float32)."""
    if model_args.load_in_4bit:
        from transformers import BitsAndBytesConfig

        compute = torch.bfloat16 if training_args.bf16 else torch.float16
        # the head stays a full-precision layer to train in full (the "int8" key names the skip list of 4-bit too)
        quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                          bnb_4bit_compute_dtype=compute, llm_int8_skip_modules=["score"])
        return {"quantization_config": quantization, "dtype": compute,
                "device_map": {"": training_args.local_process_index if training_args.local_process_index >= 0 else 0}}
    if model_args.lora_r and training_args.bf16:
        return {"dtype": torch.bfloat16}
    return {}


def new_decoder_model(backbone: str, tokenizer, model_args: ModelArguments, training_args: TrainingArguments) -> PreTrainedModel:
    """The decoder as a classifier with the task's labels, its pad id the tokenizer's; LoRA-wrapped with `lora_r`."""
    backbone = os.path.abspath(backbone) if os.path.isdir(backbone) else backbone  # the adapter names its base by it
    config = AutoConfig.from_pretrained(backbone, **classification_config_kwargs(), pad_token_id=tokenizer.pad_token_id)
    model = AutoModelForSequenceClassification.from_pretrained(backbone, config=config,
                                                               **quantization_settings(model_args, training_args))
    fit_embeddings(model, tokenizer)
    if not model_args.lora_r:
        return model
    peft = require_peft()
    if model_args.load_in_4bit:
        model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=training_args.gradient_checkpointing)
    elif training_args.gradient_checkpointing:
        model.enable_input_require_grads()  # frozen embeddings: checkpointed blocks still need an input with a grad
    lora = peft.LoraConfig(task_type=peft.TaskType.SEQ_CLS, r=model_args.lora_r, lora_alpha=model_args.lora_alpha,
                           lora_dropout=model_args.lora_dropout, target_modules=lora_targets(config.model_type,
                                                                                            model_args.lora_target_modules))
    model = peft.get_peft_model(model, lora)
    if training_args.bf16 or training_args.fp16:  # under autocast: adapters and head train in float32 over the
        for parameter in model.parameters():      # bf16/4-bit frozen weights
            if parameter.requires_grad and parameter.dtype != torch.float32:
                parameter.data = parameter.data.float()
    return model


def is_adapter_folder(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, ADAPTER_CONFIG_FILE))


def save_decoder(model, tokenizer, path: str, merge: bool) -> None:
    """best/: the adapter with the head and config.json (naming the base), or the merged model; the tokenizer."""
    if not hasattr(model, "peft_config"):
        model.save_pretrained(path)
    elif merge:
        model.merge_and_unload().save_pretrained(path)  # after the fold's predictions: the merge changes the model
    else:
        model.save_pretrained(path)
        model.get_base_model().config.save_pretrained(path)
    tokenizer.save_pretrained(path)


def load_decoder_model(folder: str, **kwargs) -> tuple[PreTrainedModel, dict]:
    """A decoder checkpoint: merged weights as they are, or the base model named in adapter_config.json with the
    adapter and head applied (merged for inference)."""
    if not is_adapter_folder(folder):
        return AutoModelForSequenceClassification.from_pretrained(folder, output_loading_info=True, **kwargs)
    peft = require_peft()
    with open(os.path.join(folder, ADAPTER_CONFIG_FILE), encoding="utf-8") as handle:
        base = json.load(handle).get("base_model_name_or_path")
    try:
        model = AutoModelForSequenceClassification.from_pretrained(base, config=AutoConfig.from_pretrained(folder), **kwargs)
        fit_embeddings(model, AutoTokenizer.from_pretrained(folder))  # tokens added in training: the adapter holds them
    except OSError as exc:
        raise PipelineError(f"{folder}: holds a LoRA adapter over the base model {base}, which cannot be loaded "
                            f"({first_line(exc)}); put it there, or train with merge_lora: true") from None
    return peft.PeftModel.from_pretrained(model, folder).merge_and_unload(), {"missing_keys": []}


class DecoderBackend(EncoderBackend):
    """Every `model_name_or_path` whose config is a causal LM's (a local folder, or a hub name once cached)."""

    name = "decoder"
    trains_an_encoder = False  # no MLM post-training, HP search, encoder techniques or ONNX export
    multi_process = True
    heads = ("cls",)  # the model's own head on the last token
    takes_lora = True

    def matches(self, model_name_or_path: str) -> bool:
        if is_offline(model_name_or_path) or is_ngram(model_name_or_path):
            return False
        return is_decoder_config(model_config(model_name_or_path))

    def check_spec(self, model_name_or_path: str) -> None:
        check_model_folder(model_name_or_path)

    def pretokenizer_of(self, model_name_or_path: str) -> str | None:
        return "none"

    def check_lora(self, model_args: ModelArguments) -> None:
        require_peft()
        check_quantization(model_args)

    def new_model(self, backbone: str, tokenizer, model_args: ModelArguments, training_args: TrainingArguments,
                  technique_args: TechniqueArguments | None = None, head: str = "cls") -> PreTrainedModel:
        return new_decoder_model(backbone, tokenizer, model_args, training_args)

    def save_model(self, model, tokenizer, path: str, model_args: ModelArguments) -> None:
        save_decoder(model, tokenizer, path, model_args.merge_lora)

    def owns_checkpoint(self, folder: str) -> bool:
        return is_adapter_folder(folder) or is_decoder_config(model_config(folder))

    def load_checkpoint(self, folder: str, device=None, threads: int | None = None) -> CheckpointClassifier:
        return CheckpointClassifier.from_pretrained(folder, device=device, threads=threads, loader=load_decoder_model)
