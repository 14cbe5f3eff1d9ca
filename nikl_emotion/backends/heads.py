"""Classification heads over an encoder, registered by name like the backends: `cls` (the backbone's own
sequence-classification head on the first token) and `target_pool` (which also reads the target's own tokens).

A head is one `ClassifierHead` subclass: its `name` (the `classifier_head` value), the model `inputs` it reads beyond
the tokenizer's (`target_mask`, produced by `text/encoding.tokenize_batch`), `build` (a model to fine-tune from a
pretrained encoder) and `load` (a fine-tuned folder). `register_head` adds one; settings validation, training,
loading, ONNX export and the model card take the names and inputs from `HEADS`, and an unknown name is refused by
`head_named` before any model is built.

`target_pool` concatenates the first token's state with the mean and the max of the states of the target's tokens
(the `target_mask` input, found from the target's character span through the tokenizer's offsets, see
`text/encoding.tokenize_batch`), applies dropout and one linear layer to the labels. A row without a target (or
whose mask is empty) pools the whole text. The 4th-place NIKL 2023 entry fed such pooled target states to its
classifier; the first token alone is weakest where one text carries several targets with different labels.

A `target_pool` checkpoint is a Hugging Face folder (`config.json` with `classifier_head: target_pool`,
`model.safetensors`) whose class lives here: `load_trained_model` (and `EmotionClassifier`, `inference.py`,
`export.py`) load it; `transformers.pipeline()` and `AutoModelForSequenceClassification` cannot.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.models.auto.modeling_auto import MODEL_MAPPING

from nikl_emotion.base.registries import add_named
from nikl_emotion.base.vocabulary import check_choice

__all__ = [
    "TARGET_MASK",
    "head_of",
    "pool_target",
    "TargetPoolForSequenceClassification",
    "without_pooler",
    "ClassifierHead",
    "FirstTokenHead",
    "TargetPoolHead",
    "HEADS",
    "register_head",
    "head_named",
    "build_classifier",
    "load_trained_model",
    "head_inputs",
]


TARGET_MASK = "target_mask"  # the model input naming the target's tokens (1) among a row's tokens


def head_of(config: PretrainedConfig) -> str:
    """The head a saved model config declares; `cls` for every checkpoint without the key (hub models, older runs)."""
    return getattr(config, "classifier_head", None) or "cls"


def pool_target(
    states: torch.Tensor, target_mask: torch.Tensor | None, attention_mask: torch.Tensor | None
) -> torch.Tensor:
    """[first token, mean over the target's tokens, max over them] (batch, 3 * hidden). Rows whose target mask is
    empty (no target, or none given) pool every attended token instead."""
    batch, length, _ = states.shape
    every = (
        torch.ones(batch, length, dtype=torch.bool, device=states.device)
        if attention_mask is None
        else attention_mask.bool()
    )
    chosen = every if target_mask is None else target_mask.bool() & every
    chosen = chosen | (every & ~chosen.any(dim=1, keepdim=True))  # logical ops: ONNX Runtime has no bool Where
    weights = chosen.unsqueeze(-1).to(states.dtype)
    mean = (states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
    maximum = states.masked_fill(~chosen.unsqueeze(-1), torch.finfo(states.dtype).min).max(dim=1).values
    return torch.cat([states[:, 0], mean, maximum], dim=-1)


class TargetPoolForSequenceClassification(PreTrainedModel):
    """Any Hugging Face encoder (`AutoModel`) under the target-pooling head; the config is the encoder's own, with
    `classifier_head: target_pool` added."""

    config_class = PretrainedConfig
    base_model_prefix = "backbone"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def __init__(self, config: PretrainedConfig, backbone: PreTrainedModel | None = None):
        super().__init__(config)
        config.classifier_head = "target_pool"
        self.backbone = backbone if backbone is not None else AutoModel.from_config(config, **without_pooler(config))
        rate = getattr(config, "classifier_dropout", None)
        self.dropout = nn.Dropout(getattr(config, "hidden_dropout_prob", 0.1) if rate is None else rate)
        self.classifier = nn.Linear(3 * config.hidden_size, config.num_labels)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if module is getattr(self, "classifier", None):  # the backbone keeps its (pretrained) weights
            nn.init.normal_(module.weight, std=getattr(self.config, "initializer_range", 0.02))
            nn.init.zeros_(module.bias)

    def forward(
        self, input_ids=None, attention_mask=None, token_type_ids=None, target_mask=None, labels=None, **kwargs
    ) -> SequenceClassifierOutput:
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        states = self.backbone(**inputs, **kwargs).last_hidden_state
        logits = self.classifier(self.dropout(pool_target(states, target_mask, attention_mask)))
        return SequenceClassifierOutput(logits=logits)


def without_pooler(config: PretrainedConfig) -> dict:
    """The encoder without its pooler where it has one (BERT, RoBERTa): the head never reads it, and a parameter
    without gradient stops a multi-process run (DDP waits for its gradient)."""
    encoder_class = MODEL_MAPPING.get(type(config), None)
    takes_it = encoder_class is not None and "add_pooling_layer" in inspect.signature(encoder_class.__init__).parameters
    return {"add_pooling_layer": False} if takes_it else {}


class ClassifierHead:
    """One way to put the labels on top of an encoder (see the module docstring). A head other than `cls` saves its
    name in the model config (`classifier_head`), which is how `load_trained_model` finds it again."""

    name: str = ""
    inputs: tuple[str, ...] = ()  # model inputs beyond the tokenizer's (TARGET_MASK)

    def build(self, model_name_or_path: str, config: PretrainedConfig, **loading) -> PreTrainedModel:
        raise NotImplementedError

    def load(self, folder: str, config: PretrainedConfig, **kwargs) -> tuple[PreTrainedModel, dict]:
        """The fine-tuned model in `folder` and transformers' loading info (`missing_keys`, ...)."""
        raise NotImplementedError

    def usage(self) -> list[str] | None:
        """The model card's lines on loading this head without the package (None: transformers alone loads it, and
        the card shows `pipeline()`)."""
        forward = f"  # forward(input_ids, attention_mask, ..., {', '.join(self.inputs)})" if self.inputs else ""
        return [
            f"This model's head is `{self.name}`, a class of the nikl-emotion package: `transformers.pipeline()` and "
            "`AutoModelForSequenceClassification` cannot load it. Load the weights without the package's cleaning "
            "with:",
            "",
            "```python",
            "from nikl_emotion.backends.heads import load_trained_model",
            f'model, _ = load_trained_model("PATH/TO/THIS/FOLDER"){forward}',
            "```",
            "",
        ]


class FirstTokenHead(ClassifierHead):
    """The backbone's own sequence-classification head: a plain transformers checkpoint (`pipeline()` loads it)."""

    name = "cls"

    def build(self, model_name_or_path: str, config: PretrainedConfig, **loading) -> PreTrainedModel:
        return AutoModelForSequenceClassification.from_pretrained(model_name_or_path, config=config, **loading)

    def load(self, folder: str, config: PretrainedConfig, **kwargs) -> tuple[PreTrainedModel, dict]:
        return AutoModelForSequenceClassification.from_pretrained(folder, output_loading_info=True, **kwargs)

    def usage(self) -> None:
        return None


class TargetPoolHead(ClassifierHead):
    """`TargetPoolForSequenceClassification` over the pretrained encoder (`AutoModel`), the head new."""

    name = "target_pool"
    inputs = (TARGET_MASK,)

    def build(self, model_name_or_path: str, config: PretrainedConfig, **loading) -> PreTrainedModel:
        backbone = AutoModel.from_pretrained(model_name_or_path, config=config, **without_pooler(config), **loading)
        model = TargetPoolForSequenceClassification(backbone.config, backbone)
        return model.to(backbone.dtype)  # the new head in the backbone's dtype (float32 to fine-tune)

    def load(self, folder: str, config: PretrainedConfig, **kwargs) -> tuple[PreTrainedModel, dict]:
        return TargetPoolForSequenceClassification.from_pretrained(
            folder, config=config, output_loading_info=True, **kwargs
        )

    def usage(self) -> list[str]:
        return [
            "The head pools the first token with the mean and max of the target's token states.",
            "",
            *super().usage(),
            "`target_mask` marks the target's tokens (1) in each row; `EmotionClassifier` computes it from the "
            "target's character span.",
        ]


HEADS: dict[str, ClassifierHead] = {}


def register_head(head: ClassifierHead) -> ClassifierHead:
    """Make `head` a `classifier_head` value every command accepts (a name registered twice is refused)."""
    return add_named(HEADS, head, "head")


register_head(FirstTokenHead())
register_head(TargetPoolHead())


def head_named(name: str) -> ClassifierHead:
    """The registered head called `name`; any other name is refused with the registered ones."""
    check_choice("classifier_head", name, tuple(HEADS))
    return HEADS[name]


def build_classifier(model_name_or_path: str, config: PretrainedConfig, head: str, **loading) -> PreTrainedModel:
    """A classifier to fine-tune: the pretrained encoder at `model_name_or_path` under the head named `head`, the
    head new; `loading`: from_pretrained keywords (dtype, revision, trust_remote_code, attn_implementation)."""
    chosen = head_named(head)
    model = chosen.build(model_name_or_path, config, **loading)
    if chosen.name != "cls":  # a plain checkpoint stays plain; any other head is found again by its name
        model.config.classifier_head = chosen.name
    return model


def load_trained_model(folder: str, **kwargs) -> tuple[PreTrainedModel, dict]:
    """A fine-tuned classifier folder with its head, and the loading info (`missing_keys`, ...)."""
    config = AutoConfig.from_pretrained(folder, trust_remote_code=kwargs.get("trust_remote_code", False))
    return head_named(head_of(config)).load(folder, config, **kwargs)


def head_inputs(model: nn.Module) -> tuple[str, ...]:
    """The inputs beyond the tokenizer's that a model's head reads (none for a model without a config)."""
    config = getattr(model, "config", None)
    return () if config is None else head_named(head_of(config)).inputs
