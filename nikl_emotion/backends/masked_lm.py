"""The encoder backend's post-trainer (`post_train.py`, `abilities.PostTrainer`): the masked-LM model of a hub
encoder or of a new offline backbone, the classifier's modules its masked-LM class leaves out, the vocabulary head
run on the masked positions only, and replaced-token detection (`rtd.py`) for an ELECTRA discriminator. What is
architecture-specific about post-training lives here; the program (`training/post_training.py`) is the same for
any backend that offers a post-trainer."""

from __future__ import annotations

import logging
import os
from types import SimpleNamespace

import torch
from accelerate import PartialState
from transformers import (
    AutoConfig,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    ElectraForPreTraining,
    PreTrainedModel,
)
from transformers.modeling_outputs import MaskedLMOutput

from nikl_emotion.backends.backbone import (
    check_max_seq_length,
    load_tokenizer,
    offline_config,
    parse_offline_spec,
    train_wordpiece_tokenizer,
)
from nikl_emotion.backends.fold_backend import PostTrainer
from nikl_emotion.backends.rtd import ReplacedTokenDetection, check_rtd_backbone
from nikl_emotion.base.config import ModelArguments, PostTrainSettings
from nikl_emotion.base.vocabulary import is_offline
from nikl_emotion.text.encoding import add_marker_tokens
from nikl_emotion.text.preprocessing import Preprocessing

__all__ = [
    "MaskedLMPostTrainer",
    "mlm_model_and_tokenizer",
    "use_masked_positions_head",
    "set_dropout",
]

logger = logging.getLogger(__name__)


class MaskedLMPostTrainer(PostTrainer):
    """MLM for any encoder with a masked-LM class; RTD for an ELECTRA discriminator."""

    def check(self, model_args: ModelArguments, objective: str) -> None:
        if objective == "rtd" and is_offline(model_args.model_name_or_path):  # before a tokenizer is trained
            arch, _ = parse_offline_spec(model_args.model_name_or_path)
            check_rtd_backbone(SimpleNamespace(model_type=arch), model_args.model_name_or_path)

    def model_and_tokenizer(self, settings: PostTrainSettings, texts: list[str], preprocessing: Preprocessing):
        training = settings.training
        return mlm_model_and_tokenizer(
            settings.model, texts, preprocessing, training.seed, training.output_dir, settings.objective.objective
        )

    def training_model(self, model, objective_args):
        if objective_args.objective == "rtd":
            model = ReplacedTokenDetection(
                model, objective_args.rtd_generator_size, objective_args.rtd_discriminator_weight
            )
        elif objective_args.masked_positions_head:
            use_masked_positions_head(model)
        if objective_args.pretraining_dropout is not None:
            set_dropout(model, objective_args.pretraining_dropout)
        return model


def mlm_model_and_tokenizer(
    model_args: ModelArguments,
    texts: list[str],
    preprocessing: Preprocessing,
    seed: int,
    output_dir: str,
    objective: str = "mlm",
):
    """A masked-LM model (`objective: rtd`: an ELECTRA discriminator) and its tokenizer: from a hub name or folder,
    or a new offline backbone built on `texts`.
    An offline tokenizer is saved to `output_dir` at once, so a resumed run (and every other process) uses the very
    vocabulary the checkpoints were trained with instead of training it again."""
    with_markers = preprocessing.input_format == "marker"
    if is_offline(model_args.model_name_or_path):
        state = PartialState()
        with state.main_process_first():
            if os.path.exists(os.path.join(output_dir, "tokenizer.json")):
                tokenizer = load_tokenizer(output_dir)
            else:
                tokenizer = train_wordpiece_tokenizer(texts, vocab_size=model_args.offline_vocab_size)
                if state.is_main_process:
                    tokenizer.save_pretrained(output_dir)
        config = offline_config(model_args.model_name_or_path, tokenizer)
        if objective == "rtd":
            check_rtd_backbone(config, model_args.model_name_or_path)
        torch.manual_seed(seed)
        model = ElectraForPreTraining(config) if objective == "rtd" else AutoModelForMaskedLM.from_config(config)
        _keep_classifier_modules(model, None)
    else:
        loading = model_args.loading
        tokenizer = load_tokenizer(model_args.model_name_or_path, with_markers=with_markers, loading=loading)
        check_max_seq_length(preprocessing.max_seq_length, model_args.model_name_or_path, tokenizer, loading)
        # every weight trains: float32 whatever the checkpoint ships in (precision.py)
        weights = {"dtype": torch.float32, **loading.model_kwargs()}
        if objective == "rtd":
            config = AutoConfig.from_pretrained(model_args.model_name_or_path, **loading.hub_kwargs())
            check_rtd_backbone(config, model_args.model_name_or_path)
            model = ElectraForPreTraining.from_pretrained(model_args.model_name_or_path, **weights)
        else:
            model = AutoModelForMaskedLM.from_pretrained(model_args.model_name_or_path, **weights)
        _keep_classifier_modules(model, model_args.model_name_or_path, weights)
    if with_markers:
        add_marker_tokens(tokenizer)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    return model, tokenizer


def _keep_classifier_modules(model: PreTrainedModel, source: str | None, weights: dict | None = None) -> list[str]:
    """Give a masked-LM model the encoder modules its masked-LM class leaves out but the classifier uses (BERT's
    pooler: `BertForMaskedLM` has none, `BertForSequenceClassification` reads it), taken from `source`'s
    checkpoint (freshly initialised for a new backbone, `source=None`) and frozen: the MLM loss never reaches them.
    `save_pretrained` then writes them, so fine-tuning the post-trained folder loads every pretrained weight
    instead of silently re-initialising them (`weights`: the from_pretrained keywords the model was loaded with).
    Returns the module names added."""
    base = model.base_model
    with torch.device("meta"):
        classifier = AutoModelForSequenceClassification.from_config(model.config)
    missing = [name for name, _ in classifier.base_model.named_children() if getattr(base, name, None) is None]
    if not missing:
        return []
    if source is None:
        classifier, absent = AutoModelForSequenceClassification.from_config(model.config), set(missing)
    else:
        classifier, info = AutoModelForSequenceClassification.from_pretrained(
            source, output_loading_info=True, **(weights or {})
        )
        absent = {key.split(".")[1] for key in info["missing_keys"] if key.startswith(f"{model.base_model_prefix}.")}
    for name in missing:
        setattr(base, name, getattr(classifier.base_model, name).requires_grad_(False))
    kept = [name for name in missing if name not in absent]
    if kept:
        logger.info("post-training keeps %s's pretrained %s (frozen) for the classifier", source, ", ".join(kept))
    if absent & set(missing):
        logger.info(
            "post-training saves a newly initialised %s for the classifier (none in %s)",
            ", ".join(sorted(absent & set(missing))),
            source or "a new backbone",
        )
    return missing


def _masked_lm_head(model) -> torch.nn.Module | None:
    """The vocabulary head of an ELECTRA, BERT or RoBERTa masked-LM model (hidden states -> vocabulary logits)."""
    if hasattr(model, "generator_lm_head") and hasattr(model, "generator_predictions"):
        return torch.nn.Sequential(model.generator_predictions, model.generator_lm_head)
    if hasattr(model, "cls") and hasattr(model.cls, "predictions"):
        return model.cls
    if hasattr(model, "lm_head"):
        return model.lm_head
    return None


def _masked_positions_forward(model: torch.nn.Module, head: torch.nn.Module):
    """A forward for a masked-LM model whose vocabulary head runs on the masked positions only. The loss is the
    model's own (cross-entropy over the positions with a label), but the head, the most expensive layer of a small
    model with a large vocabulary, costs ~15% of what it costs on every token."""

    def forward(input_ids, attention_mask=None, labels=None, num_items_in_batch=None, **optional):
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        inputs |= {k: optional[k] for k in ("token_type_ids", "position_ids") if optional.get(k) is not None}
        hidden = model.base_model(**inputs).last_hidden_state
        selected = labels != -100
        logits = head(hidden[selected]).float()
        loss = torch.nn.functional.cross_entropy(logits, labels[selected], reduction="sum")
        # normalised by the masked tokens of the whole optimizer step when the Trainer counts them (gradient
        # accumulation, several processes), else by this batch's
        # at least 1: a step can draw no masked position (an epoch's last batch of one short row), and 0/0 would
        # make every weight NaN
        count = torch.as_tensor(selected.sum() if num_items_in_batch is None else num_items_in_batch).clamp(min=1)
        return MaskedLMOutput(loss=loss / count)

    return forward


def use_masked_positions_head(model: torch.nn.Module) -> bool:
    """Give `model` the masked-positions forward (an instance attribute, so DDP, checkpoints and `save_pretrained`
    still see the plain model); False for an architecture whose head is not known."""
    head = _masked_lm_head(model)
    if head is None:
        return False
    model.forward = _masked_positions_forward(model, head)
    return True


def set_dropout(model: torch.nn.Module, probability: float) -> None:
    """Every dropout of `model` (embeddings, attention, hidden; generator too) at `probability` while it
    post-trains. The config is left alone, so the saved folder fine-tunes with the model's own dropout."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = probability
