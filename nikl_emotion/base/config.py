"""Run configuration: `HfArgumentParser` dataclasses, filled from a YAML file and then command-line overrides.

A YAML file is turned into `--key value` tokens placed before the command-line ones, so both go through the same
parser (same types, same checks) and the command line wins.

The settings are a leaf: this module imports no backend, text, decision or training module (only the names in
`vocabulary.py`), so any layer can read a run's settings without loading a model. Each dataclass checks its own
values in `__post_init__`; what needs a backend, a file or another run (a model folder, a loss's parameters, kiwipiepy,
a pseudo-label run) is checked by `config_checks.py`, whose `parse_config` is what commands call.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import logging
import math
import os
import socket
import string
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import yaml
from accelerate.state import AcceleratorState, GradientState, PartialState
from transformers import HfArgumentParser

if TYPE_CHECKING:
    from transformers import TrainingArguments

from nikl_emotion.base.errors import PipelineError
from nikl_emotion.base.labels import NUM_LABELS
from nikl_emotion.base.vocabulary import (
    ADVERSARIAL_METHODS,
    ATTN_IMPLEMENTATIONS,
    DECISION_MODES,
    DEFAULT_DECISION_MODE,
    DEFAULT_INPUT_TEMPLATE,
    DEFAULT_VOTE_RULE,
    DEFAULT_VOTE_TIE,
    INPUT_FORMATS,
    MAX_UNKNOWN_RATE,
    MODEL_DTYPES,
    NO_TARGET,
    PRETOKENIZERS,
    VOTE_RULES,
    VOTE_TIES,
    check_choice,
    spelled,
)

__all__ = [
    "ModelLoading",
    "ModelArguments",
    "PreprocessingArguments",
    "DataArguments",
    "FoldArguments",
    "StoppingArguments",
    "BudgetArguments",
    "DecisionArguments",
    "LossArguments",
    "TechniqueArguments",
    "PIPELINE_ARGUMENT_CLASSES",
    "training_arguments_class",
    "TRAINING_DEFAULTS",
    "PostTrainDataArguments",
    "OBJECTIVES",
    "MLMArguments",
    "POST_TRAIN_DEFAULTS",
    "SearchArguments",
    "SearchSettings",
    "HP_PRUNERS",
    "DistillArguments",
    "RunSettings",
    "DistillSettings",
    "PostTrainSettings",
    "parse_arguments",
    "validate_training_values",
    "field_defaults",
]


@dataclass(frozen=True)
class ModelLoading:
    """How a hub checkpoint is fetched and built, beside its dtype (precision.py): the keywords every
    `from_pretrained` of the model, its config and its tokenizer gets, in training, post-training, distillation and
    inference (recorded in each `best/`)."""

    trust_remote_code: bool = False
    attn_implementation: str | None = None
    revision: str | None = None

    def hub_kwargs(self) -> dict:
        """For a config, a tokenizer or a model of the checkpoint."""
        return {"trust_remote_code": self.trust_remote_code, **({"revision": self.revision} if self.revision else {})}

    def model_kwargs(self) -> dict:
        """For the model: the hub keywords and the attention kernel."""
        kernel = {"attn_implementation": self.attn_implementation} if self.attn_implementation else {}
        return {**self.hub_kwargs(), **kernel}


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default="offline:electra-tiny",
        metadata={
            "help": "Hub name (e.g. beomi/KcELECTRA-base-v2022), local checkpoint, "
            "offline:<bert|electra>-<tiny|mini|small>, "
            "or ngram:tfidf / ngram:context (n-gram TF-IDF + logistic regression, no encoder; context: the "
            "target's surrounding characters as their own features)."
        },
    )
    offline_vocab_size: int = field(
        default=8000, metadata={"help": "WordPiece vocabulary size of an offline backbone."}
    )
    max_unknown_rate: float = field(
        default=MAX_UNKNOWN_RATE,
        metadata={
            "help": "Stop when more than this share of "
            "the encoded tokens are the tokenizer's unknown token (the text would be lost)."
        },
    )
    classifier_head: str = field(
        default="cls",
        metadata={
            "help": "cls: the backbone's own head on the first token; "
            "target_pool: the first token with the mean and max of the target's tokens."
        },
    )
    lora_r: int = field(
        default=0,
        metadata={
            "help": "Decoder backbones: LoRA rank (0: full fine-tuning). The "
            "classification head is always trained in full."
        },
    )
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA scaling numerator (the update is alpha/r * BA)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA branch's input."})
    lora_target_modules: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Module names LoRA adapts (empty: "
            "every attention and MLP projection of the family, see decoder_backend.py)."
        },
    )
    merge_lora: bool = field(
        default=False,
        metadata={
            "help": "Save best/ as merged full weights (loads like any "
            "model) instead of the adapter and head beside the base model's name."
        },
    )
    load_in_4bit: bool = field(
        default=False,
        metadata={
            "help": "QLoRA: the frozen base weights in 4-bit NF4 "
            "(bitsandbytes: pip install .[qlora]; on a CPU >= 0.50); needs lora_r > 0."
        },
    )
    model_dtype: str = field(
        default="auto",
        metadata={
            "help": "The dtype the checkpoint's weights are loaded in: "
            "auto (trained weights in float32 whatever the checkpoint ships in; a frozen LoRA base in "
            "the bf16/fp16 autocast dtype), or float32, bfloat16, float16 for a frozen LoRA base."
        },
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={
            "help": "Run the modelling code a checkpoint ships "
            "(EXAONE and other custom-code models); only for checkpoints you trust."
        },
    )
    attn_implementation: str | None = field(
        default=None,
        metadata={
            "help": "Attention kernel: eager, sdpa, "
            "flash_attention_2 (CUDA, flash-attn), flash_attention_3, flex_attention "
            "(default: transformers' choice)."
        },
    )
    revision: str | None = field(
        default=None, metadata={"help": "The hub revision (branch, tag or commit) of model_name_or_path."}
    )

    def __post_init__(self):
        # classifier_head: a registered head's name (backends/heads.py), checked by config_checks
        if self.lora_r < 0:
            raise PipelineError(f"lora_r: must be >= 0 (0: no LoRA), got {self.lora_r}")
        if not (_is_finite(self.lora_alpha) and self.lora_alpha > 0):
            raise PipelineError(f"lora_alpha: must be a number > 0, got {self.lora_alpha}")
        if not (_is_finite(self.lora_dropout) and 0 <= self.lora_dropout < 1):
            raise PipelineError(f"lora_dropout: must be in [0, 1), got {self.lora_dropout}")
        lora_only = [key for key in ("merge_lora", "load_in_4bit") if getattr(self, key)] + (
            ["lora_target_modules"] if self.lora_target_modules else []
        )
        if lora_only and self.lora_r == 0:
            raise PipelineError(f"{lora_only[0]}: applies to LoRA; set lora_r (e.g. 16)")
        if self.merge_lora and self.load_in_4bit:
            raise PipelineError(
                "merge_lora: cannot merge an adapter into 4-bit base weights without rounding them; "
                "keep the adapter (merge_lora: false), or merge it later into a bf16 copy of the base"
            )
        if not (_is_finite(self.max_unknown_rate) and 0 <= self.max_unknown_rate <= 1):
            raise PipelineError(f"max_unknown_rate: must be in [0, 1], got {self.max_unknown_rate}")
        if not self.model_name_or_path:
            raise PipelineError("model_name_or_path: give a hub model, a local folder, offline:... or ngram:...")
        check_choice("model_dtype", self.model_dtype, MODEL_DTYPES)
        if self.model_dtype != "auto" and self.lora_r == 0:
            raise PipelineError(
                f"model_dtype: {self.model_dtype} names the dtype of a frozen LoRA base; full "
                "fine-tuning trains float32 weights (a 2e-5 step leaves most bf16 weights unchanged): "
                "leave model_dtype: auto and set bf16: true for mixed precision"
            )
        kernel = self.attn_implementation
        if kernel is not None and kernel not in ATTN_IMPLEMENTATIONS and "/" not in kernel:
            raise PipelineError(
                f"attn_implementation: {kernel!r} is not {spelled(ATTN_IMPLEMENTATIONS)} (or a hub "
                "kernel such as kernels-community/flash-attn)"
            )

    @property
    def loading(self) -> ModelLoading:
        return ModelLoading(self.trust_remote_code, self.attn_implementation, self.revision)


@dataclass
class PreprocessingArguments:
    """Cleaning and encoding: shared by fine-tuning and post-training, saved with every checkpoint."""

    remove_others: bool = field(default=True, metadata={"help": "Remove the &others& placeholder."})
    remove_placeholders: bool = field(default=False, metadata={"help": "Remove every &name1&-style placeholder."})
    cleanse: bool = field(
        default=True,
        metadata={
            "help": "KcBERT symbol cleansing (keeps Hangul, ASCII, some punctuation; drops URLs, emoji; "
            "squeezes repeats)."
        },
    )
    remove_emoji: bool = field(default=False, metadata={"help": "Remove emoji (implied by cleanse)."})
    input_format: str = field(
        default="pair",
        metadata={
            "help": "How the target is shown to the model: pair, marker, "
            "prompt or instruction (input_template filled in: for decoders); text ignores it (the "
            "reference's input)."
        },
    )
    input_template: str = field(
        default=DEFAULT_INPUT_TEMPLATE,
        metadata={
            "help": "input_format instruction: the "
            "row as one string, with {text} and {target} (a row without a target names "
            f"'{NO_TARGET}'); the text is shortened to fit max_seq_length, never what follows it."
        },
    )
    max_seq_length: int = field(default=200, metadata={"help": "Truncate encodings to this many tokens."})
    offline_pretokenizer: str = field(
        default="none",
        metadata={
            "help": "none, or kiwi: split words at morpheme "
            "boundaries (kiwipiepy) before an offline backbone's subword tokenizer; a "
            "folder post-trained with it needs the same."
        },
    )

    def __post_init__(self):
        _validate_preprocessing(self)


@dataclass
class DataArguments(PreprocessingArguments):
    train_files: list[str] = field(
        default_factory=list, metadata={"help": "One or more labelled jsonl files (e.g. train and dev)."}
    )
    test_file: str | None = field(default=None, metadata={"help": "Unlabelled jsonl to predict with every fold."})

    def __post_init__(self):
        super().__post_init__()
        _check_input_files(self.train_files, "labelled jsonl file")
        if self.test_file is not None and not os.path.isfile(self.test_file):
            raise PipelineError(f"test_file: {self.test_file!r}: file not found")


_MAX_TIME_BUDGET_MINUTES = 7 * 24 * 60


@dataclass
class FoldArguments:
    """The folds: how many, which one this command trains, and whether a run already in the folder starts again."""

    num_folds: int = field(default=5, metadata={"help": "Number of stratified folds."})
    fold: int | None = field(
        default=None, metadata={"help": "Run only this fold (0-based); the run is summarised once all folds exist."}
    )
    overwrite: bool = field(
        default=False, metadata={"help": "Start again in an output_dir that holds a run (its files are deleted)."}
    )

    def __post_init__(self):
        if self.num_folds < 2:
            raise PipelineError(f"num_folds: must be at least 2, got {self.num_folds}")
        if self.fold is not None and not 0 <= self.fold < self.num_folds:
            raise PipelineError(f"fold: must be in [0, {self.num_folds - 1}], got {self.fold}")


@dataclass
class StoppingArguments:
    """How a fold's epoch is chosen: the patience of early stopping, and the choosing rows (the rows that choose the
    epoch: held out of the fold's training share with `early_stopping_split`, else its validation rows)."""

    early_stopping_patience: int = field(
        default=3, metadata={"help": "Epochs without a better validation micro-F1 before stopping; 0 disables."}
    )
    early_stopping_split: float = field(
        default=0.0,
        metadata={
            "help": "Share of each fold's training rows held out (multi-label stratified, seeded) to choose the "
            "epoch: early stopping and the best checkpoint. The fold's validation rows then choose nothing, so the "
            "out-of-fold probabilities (and the stack and rules fitted on them) are as unseen as a test file's. "
            "0: the validation rows choose the epoch (optimistic out-of-fold scores)."
        },
    )

    def __post_init__(self):
        if self.early_stopping_patience < 0:
            raise PipelineError("early_stopping_patience: must be >= 0")
        if not (_is_finite(self.early_stopping_split) and 0.0 <= self.early_stopping_split < 0.5):
            raise PipelineError(f"early_stopping_split: must be in [0, 0.5), got {self.early_stopping_split}")


@dataclass
class BudgetArguments:
    """The fine-tuning's time budget: the minutes `train.py` may take, shared by the folds it trains, each fold's
    schedule following its share on a budget clock (`backends/budget_clock.py`)."""

    time_budget_minutes: float | None = field(
        default=None,
        metadata={
            "help": "Minutes this train.py may take for the folds it trains, loading included; each fold gets the "
            "minutes left over the folds left. A fold's learning-rate schedule follows its seconds or the steps of "
            "num_train_epochs, whichever is further along: a fast machine trains every epoch, a slow one the same "
            "schedule compressed. Early stopping still applies. A resumed run gets the minutes again for the folds "
            "left. Unset: num_train_epochs alone."
        },
    )

    def __post_init__(self):
        _check_time_budget(self.time_budget_minutes)


@dataclass
class DecisionArguments:
    """How probabilities become labels: the fixed rule (threshold, fallback, the vote over folds) and whether the
    run's rule is that one or chosen on nested out-of-fold scores (`decision`)."""

    threshold: float = field(default=0.5, metadata={"help": "Probability at or above which a label is predicted."})
    fallback_top_label: bool = field(
        default=True, metadata={"help": "An empty prediction takes the top-scoring label."}
    )
    vote_rule: str = field(
        default=DEFAULT_VOTE_RULE, metadata={"help": f"Hard-vote rule over folds: {spelled(VOTE_RULES)}."}
    )
    vote_tie: str = field(
        default=DEFAULT_VOTE_TIE, metadata={"help": f"Majority vote with half the votes: {spelled(VOTE_TIES)}."}
    )
    decision: str = field(
        default=DEFAULT_DECISION_MODE,
        metadata={
            "help": "How submission.jsonl is decided: auto (the candidate rule "
            "with the best nested out-of-fold micro-F1: hard/soft vote, threshold or per-label OOF "
            "thresholds) or fixed (hard vote at threshold by vote_rule)."
        },
    )

    def __post_init__(self):
        check_choice("decision", self.decision, DECISION_MODES)
        if not (_is_finite(self.threshold) and 0 < self.threshold < 1):
            raise PipelineError(f"threshold: must be in (0, 1), got {self.threshold}")
        check_choice("vote_rule", self.vote_rule, VOTE_RULES)
        check_choice("vote_tie", self.vote_tie, VOTE_TIES)


@dataclass
class LossArguments:
    """The keys every loss shares, and BCE's `pos_weight`; each registered loss's own keys (`focal_gamma`,
    `asl_clip`, ...) are added beside them by `backends.losses.loss_arguments_class`, the class settings are parsed
    into, and the loss's name is checked against the registry with the other settings."""

    loss: str = field(
        default="bce",
        metadata={"help": "Training loss: bce, focal (torchvision), asl (Alibaba-MIIL) or a registered one."},
    )
    loss_reduction: str = field(
        default="mean",
        metadata={"help": "mean over all label elements of a step's batch, or sum (the reference's Focal)."},
    )
    label_smoothing: float = field(
        default=0.0, metadata={"help": "Multi-label smoothing: targets become y(1-e) + e/2."}
    )
    pos_weight: str = field(
        default="none",
        metadata={
            "help": "BCE positive-class weight per label: none, auto (negatives/positives in the fold's training "
            "split) or 8 comma-separated numbers."
        },
    )

    def __post_init__(self):
        _validate_loss(self)

    def parsed_pos_weight(self) -> str | list[float] | None:
        """None, "auto", or the 8 weights."""
        if self.pos_weight in ("none", "", None):
            return None
        if self.pos_weight == "auto":
            return "auto"
        try:
            weights = [float(part) for part in str(self.pos_weight).split(",")]
        except ValueError:
            weights = []
        if len(weights) != NUM_LABELS or any(not math.isfinite(w) or w <= 0 for w in weights):
            raise PipelineError(
                f"pos_weight: expected none, auto or {NUM_LABELS} positive comma-separated numbers, "
                f"got {self.pos_weight!r}"
            )
        return weights


@dataclass
class TechniqueArguments:
    """Fine-tuning techniques beyond the reference recipe; each is off at its default (see techniques.py)."""

    layerwise_lr_decay: float = field(
        default=1.0,
        metadata={
            "help": "Layer-wise learning-rate decay: the head "
            "learns at learning_rate, each encoder layer below at the rate above x decay, "
            "the embeddings last; 1.0 = off."
        },
    )
    ema_decay: float = field(
        default=0.0,
        metadata={
            "help": "Exponential moving average of the weights (e.g. 0.999): "
            "the average is what is evaluated and saved; 0 = off."
        },
    )
    swa_epochs: int = field(
        default=0,
        metadata={
            "help": "Stochastic weight averaging over the last N epochs' end "
            "weights: the average is what is evaluated and saved; 0 = off."
        },
    )
    rdrop_alpha: float = field(
        default=0.0,
        metadata={
            "help": "R-Drop: two dropout passes per row, mean loss plus "
            "alpha x their symmetric Bernoulli KL per label; 0 = off."
        },
    )
    multi_sample_dropout: int = field(
        default=1,
        metadata={
            "help": "Multi-sample dropout: the head's logits averaged over N dropout masks in training; 1 = off."
        },
    )
    adversarial: str = field(
        default="none",
        metadata={
            "help": "Adversarial training each step: none, fgm (word "
            "embeddings moved along their gradient) or awp (every weight matrix, relative to its norm)."
        },
    )
    adversarial_epsilon: float | None = field(
        default=None,
        metadata={
            "help": "Size of the adversarial step: fgm, "
            "the L2 norm of the embedding perturbation (default 1.0); awp, its norm "
            "relative to each weight's (default 0.005)."
        },
    )
    pseudo_label_run: str | None = field(
        default=None,
        metadata={
            "help": "A finished run (same training files, folds "
            "and seed) whose fold K's confident test predictions become extra training "
            "rows of this run's fold K."
        },
    )
    pseudo_label_threshold: float = field(
        default=0.9,
        metadata={
            "help": "A test row is pseudo-labelled when every "
            "label's probability is >= this or <= 1 - this (and one label is positive)."
        },
    )

    def __post_init__(self):
        _validate_techniques(self)

    def active(self) -> list[str]:
        """The keys set away from their off value."""
        off = {f.name: f.default for f in dataclasses.fields(self)}
        return [
            key
            for key in (
                "layerwise_lr_decay",
                "ema_decay",
                "swa_epochs",
                "rdrop_alpha",
                "multi_sample_dropout",
                "adversarial",
                "pseudo_label_run",
            )
            if getattr(self, key) != off[key]
        ]


# train.py parses these, then `TrainingArguments` (training.config_checks.argument_classes)
PIPELINE_ARGUMENT_CLASSES = (
    ModelArguments,
    DataArguments,
    FoldArguments,
    StoppingArguments,
    BudgetArguments,
    DecisionArguments,
    LossArguments,
    TechniqueArguments,
)


def training_arguments_class() -> type:
    """transformers' `TrainingArguments`, imported when a command parses or builds one: its module imports the
    Trainer's utilities, and through them peft and bitsandbytes, whose `torch.compile` decorators cost a predicting
    process ~3 s of its start (BENCHMARKS.md, issue 47) for a class prediction never uses."""
    from transformers import TrainingArguments

    return TrainingArguments


# Defaults this pipeline needs from TrainingArguments; a YAML file or the command line can still change them.
TRAINING_DEFAULTS: dict[str, object] = {
    "output_dir": "outputs/run",
    "eval_strategy": "epoch",
    "save_strategy": "epoch",
    "logging_strategy": "epoch",
    "load_best_model_at_end": True,
    "metric_for_best_model": "micro_f1",
    "greater_is_better": True,
    "save_total_limit": 1,
    "report_to": "none",
    "train_sampling_strategy": "group_by_length",
    "save_only_model": False,
}


@dataclass
class PostTrainDataArguments(PreprocessingArguments):
    train_files: list[str] = field(
        default_factory=list,
        metadata={"help": "jsonl files whose texts are learned (train, dev, test: labels are ignored)."},
    )
    validation_fraction: float = field(
        default=0.02, metadata={"help": "Share of rows held out to report the MLM loss before and after."}
    )

    def __post_init__(self):
        super().__post_init__()
        _check_input_files(self.train_files, "jsonl file to learn from")
        if not 0.0 <= self.validation_fraction < 0.5:
            raise PipelineError(f"validation_fraction: must be in [0, 0.5), got {self.validation_fraction}")


OBJECTIVES: tuple[str, ...] = ("mlm", "rtd")


@dataclass
class MLMArguments:
    objective: str = field(
        default="mlm",
        metadata={
            "help": "mlm (masked-LM) or rtd (ELECTRA replaced-token detection: "
            "a small generator fills the masked tokens, the encoder learns to spot them; ELECTRA backbones)."
        },
    )
    mlm_probability: float = field(
        default=0.15,
        metadata={
            "help": "Share of tokens selected for prediction (up to 0.4 pays at a fixed budget: Wettig et al. "
            "2023). The held-out loss is always measured at 0.15, so runs with other rates compare."
        },
    )
    whole_word_mask: bool = field(default=False, metadata={"help": "Mask all WordPiece pieces of a word together."})
    masked_positions_head: bool = field(
        default=True,
        metadata={
            "help": "mlm: run the vocabulary head on the masked positions only (the same loss; a small model's "
            "costliest layer at ~15%% of its cost). false: on every position, the model's own forward."
        },
    )
    pretraining_dropout: float | None = field(
        default=None,
        metadata={
            "help": "Dropout while post-training (0: off, as Cramming pretrains); unset: the model's own. The saved "
            "model keeps its own dropout for fine-tuning."
        },
    )
    pack_sequences: bool = field(
        default=False,
        metadata={
            "help": "Pack the short task texts, each encoded whole as fine-tuning encodes it (text, target, "
            "separators, token types; positions restarting at 0), into blocks of max_seq_length tokens: fewer "
            "padded positions, more text per step. The held-out rows stay unpacked."
        },
    )
    rtd_generator_size: float = field(
        default=0.25,
        metadata={"help": "rtd: the generator's width as a share of the discriminator's (the paper: 1/4 to 1/2)."},
    )
    rtd_discriminator_weight: float = field(
        default=50.0,
        metadata={"help": "rtd: weight of the discriminator's loss beside the generator's (the paper: 50)."},
    )
    time_budget_minutes: float | None = field(
        default=None,
        metadata={
            "help": "Size the training to this many minutes "
            "of this machine (measured on the first steps) instead of num_train_epochs."
        },
    )
    overwrite: bool = field(
        default=False, metadata={"help": "Start again in an output_dir that holds another post-training run."}
    )

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise PipelineError(f"objective: {self.objective!r} is not one of {', '.join(OBJECTIVES)}")
        if not 0.0 < self.mlm_probability < 1.0:
            raise PipelineError(f"mlm_probability: must be in (0, 1), got {self.mlm_probability}")
        dropout = self.pretraining_dropout
        if dropout is not None and not (_is_finite(dropout) and 0.0 <= dropout < 1.0):
            raise PipelineError(f"pretraining_dropout: must be in [0, 1), got {dropout}")
        if not 0.0 < self.rtd_generator_size <= 1.0:
            raise PipelineError(f"rtd_generator_size: must be in (0, 1], got {self.rtd_generator_size}")
        if not (_is_finite(self.rtd_discriminator_weight) and self.rtd_discriminator_weight > 0):
            raise PipelineError(f"rtd_discriminator_weight: must be > 0, got {self.rtd_discriminator_weight}")
        _check_time_budget(self.time_budget_minutes)


POST_TRAIN_DEFAULTS: dict[str, object] = {
    "output_dir": "outputs/post-train",
    "num_train_epochs": 3,
    "learning_rate": 5e-4,
    "weight_decay": 0.01,
    "warmup_steps": 0.06,
    "per_device_train_batch_size": 64,
    "per_device_eval_batch_size": 128,
    "eval_strategy": "epoch",
    "save_strategy": "epoch",
    "logging_strategy": "epoch",
    "save_total_limit": 1,
    "report_to": "none",
    "train_sampling_strategy": "group_by_length",
}


HP_PRUNERS = ("median", "none")


@dataclass
class SearchArguments:
    """`train.py --hp-search`'s study: where it lives (several workers share it), which folds score a trial, and
    when a trial is stopped early."""

    hp_storage: str | None = field(
        default=None,
        metadata={
            "help": "The Optuna study's storage, shared by every worker that names it: sqlite:///PATH, an RDB URL "
            "(postgresql://..., mysql://...) or journal:PATH (Optuna's journal file, for a disk several machines "
            "share). Default: sqlite:///OUT/hp_search.db (one machine)."
        },
    )
    hp_study: str = field(default="hp_search", metadata={"help": "The study's name in its storage."})
    hp_folds: list[int] | None = field(
        default=None,
        metadata={
            "help": "The folds a trial trains; its score is the micro-F1 over their choosing rows pooled (out of "
            "fold). Default: --fold, else fold 0."
        },
    )
    hp_pruner: str = field(
        default="median",
        metadata={
            "help": "median: after each fold but the last, stop a trial whose score so far is below the median of "
            "the earlier trials' at that fold (Optuna's MedianPruner, after 4 complete trials); none: never."
        },
    )
    hp_heartbeat: float = field(
        default=60.0,
        metadata={
            "help": "Seconds between a worker's signs of life on its running trial; a trial silent for 3 times "
            "this (its worker killed) is marked failed by the next worker that starts a trial."
        },
    )
    hp_report: bool = field(
        default=False,
        metadata={"help": "Write the study's table and best trial into output_dir, and run no trial."},
    )

    def __post_init__(self):
        storage = self.hp_storage
        if storage is not None and not (storage.startswith("journal:") and len(storage) > 8 or "://" in storage):
            raise PipelineError(
                f"hp_storage: {storage!r} is not sqlite:///PATH, an RDB URL (postgresql://...) or journal:PATH"
            )
        if not self.hp_study.strip():
            raise PipelineError("hp_study: give the study a name")
        check_choice("hp_pruner", self.hp_pruner, HP_PRUNERS)
        if not (_is_finite(self.hp_heartbeat) and self.hp_heartbeat > 0):
            raise PipelineError(f"hp_heartbeat: must be a positive number of seconds, got {self.hp_heartbeat}")
        folds = self.hp_folds
        if folds is not None and (not folds or min(folds) < 0 or len(set(folds)) != len(folds)):
            raise PipelineError(f"hp_folds: give distinct fold numbers >= 0, got {folds}")


@dataclass
class DistillArguments:
    teacher_run: str = field(
        default="", metadata={"help": "A finished train.py run (OOF and fold test probabilities)."}
    )
    unlabelled_files: list[str] = field(
        default_factory=list,
        metadata={
            "help": "jsonl files whose text the student learns with the fold ensemble's probabilities as targets."
        },
    )
    distill_gold_weight: float = field(
        default=0.5,
        metadata={
            "help": "Training rows' target: this x gold labels + "
            "(1 - this) x the teacher's OOF probabilities (0: teacher only, 1: gold only)."
        },
    )
    validation_file: str = field(
        default="",
        metadata={
            "help": "A labelled jsonl file the teacher never trained on: "
            "its rows choose the student's best epoch, and the student learns every training row."
        },
    )
    validation_fold: int | None = field(
        default=None,
        metadata={
            "help": "Without validation_file: the teacher fold "
            "whose rows are held out to choose the student's best epoch (default 0; "
            "optimistic, see distill.py)."
        },
    )

    def __post_init__(self):
        if not self.teacher_run:
            raise PipelineError("teacher_run: give the finished train.py run to distil (--teacher_run OUT)")
        if not 0 <= self.distill_gold_weight <= 1:
            raise PipelineError(f"distill_gold_weight: must be in [0, 1], got {self.distill_gold_weight}")
        for path in self.unlabelled_files:
            if not os.path.isfile(path):
                raise PipelineError(f"unlabelled_files: {path}: file not found")
        if self.validation_file and not os.path.isfile(self.validation_file):
            raise PipelineError(f"validation_file: {self.validation_file}: file not found")
        if self.validation_file and self.validation_fold is not None:
            raise PipelineError(
                "validation_fold: give either validation_file or validation_fold, not both (the "
                "student is validated on one set of rows)"
            )


# The settings of one program, each built by its parser and frozen: what a run was told travels as one object.
@dataclass(frozen=True)
class RunSettings:
    """A training run's settings (`train.py`, the HP search, the distillation student): built by
    `config_checks.parse_config`, written as the run's `config.yaml` (`resolved()`)."""

    model: ModelArguments
    data: DataArguments
    folds: FoldArguments
    stopping: StoppingArguments
    budget: BudgetArguments
    decision: DecisionArguments
    loss: LossArguments
    techniques: TechniqueArguments
    training: TrainingArguments

    def parts(self) -> tuple:
        """The dataclasses in the order the parser takes them (PIPELINE_ARGUMENT_CLASSES, then TrainingArguments)."""
        return (
            self.model,
            self.data,
            self.folds,
            self.stopping,
            self.budget,
            self.decision,
            self.loss,
            self.techniques,
            self.training,
        )

    def resolved(self) -> dict:
        return _resolved_config(*self.parts())

    def with_training(self, training: TrainingArguments) -> RunSettings:
        """The same settings with other Trainer arguments (a trial's, the student's)."""
        return dataclasses.replace(self, training=training)

    def with_values(self, values: dict) -> RunSettings:
        """The same settings with `values` (config keys: a search trial's) set in the parts that hold them."""
        parts, left = list(self.parts()), dict(values)
        for i, part in enumerate(parts):
            own = {key: left.pop(key) for key in [f.name for f in dataclasses.fields(part)] if key in left}
            if own:
                parts[i] = dataclasses.replace(part, **own)
        if left:
            raise ValueError(f"not a setting: {', '.join(sorted(left))}")
        return RunSettings(*parts)


@dataclass(frozen=True)
class DistillSettings:
    """`distill.py`'s settings: the student's run settings and the teacher's (`distillation.parse_distill_config`)."""

    run: RunSettings
    distill: DistillArguments

    def resolved(self) -> dict:
        *pipeline, training = self.run.parts()
        return _resolved_config(*pipeline, self.distill, training)


@dataclass(frozen=True)
class SearchSettings:
    """`train.py --hp-search`'s settings: the run's and the study's (`hp_search.parse_search_config`)."""

    run: RunSettings
    search: SearchArguments

    def resolved(self) -> dict:
        *pipeline, training = self.run.parts()
        return _resolved_config(*pipeline, self.search, training)


@dataclass(frozen=True)
class PostTrainSettings:
    """`post_train.py`'s settings (`post_training.parse_post_train_config`)."""

    model: ModelArguments
    data: PostTrainDataArguments
    objective: MLMArguments
    training: TrainingArguments

    def resolved(self) -> dict:
        return _resolved_config(self.model, self.data, self.objective, self.training)


def _yaml_tokens(mapping: dict, source: str) -> list[str]:
    tokens: list[str] = []
    for key, value in mapping.items():
        if value is None or (isinstance(value, (list, tuple)) and not value):
            continue  # unset: the parser's default applies
        tokens.append(f"--{key}")
        if isinstance(value, dict):
            raise PipelineError(f"{source}: {key}: nested mappings are not supported; use flat keys")
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        for item in values:
            # checked before anything is turned into text: aliases can nest lists exponentially ("billion laughs")
            if isinstance(item, (list, tuple, dict)):
                raise PipelineError(f"{source}: {key}: expected a value or a list of values, not nested lists")
            tokens.append(("true" if item else "false") if isinstance(item, bool) else str(item))
    return tokens


def _load_yaml(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle) or {}
    except OSError as exc:
        raise PipelineError(f"{path}: cannot read config: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise PipelineError(f"{path}: invalid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise PipelineError(f"{path}: a config must be a mapping of keys to values")
    return data


def parse_arguments(argv: list[str], classes: tuple, defaults: dict) -> tuple:
    """`[CONFIG.yaml] [--key value ...]` -> the dataclasses of `classes`: `defaults`, then the YAML file, then the
    command line, all through one HfArgumentParser whose errors are one-line `PipelineError`s."""
    file_tokens: list[str] = []
    config_path = None
    if argv and argv[0].endswith((".yaml", ".yml")):
        config_path = argv[0]
        file_tokens = _yaml_tokens(_load_yaml(config_path), config_path)
        argv = argv[1:]
    parser = HfArgumentParser(classes, allow_abbrev=False)  # `over: true` must not mean `overwrite: true`

    def error(message: str):
        raise PipelineError(message)

    parser.error = error  # one-line errors instead of argparse's usage dump
    tokens = _yaml_tokens(defaults, "defaults") + file_tokens + list(argv)
    if "--deepspeed" in tokens:
        _default_launcher_variables()
    if "--deepspeed" in tokens or os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() in ("1", "true"):
        _skip_unused_deepspeed_ops()
    try:
        *parsed, unknown = parser.parse_args_into_dataclasses(args=tokens, return_remaining_strings=True)
    except PipelineError:
        raise
    except (ValueError, TypeError) as exc:  # TrainingArguments' own checks
        raise PipelineError(str(exc).strip().splitlines()[0]) from None
    except ImportError as exc:  # a key whose package is missing (--deepspeed without deepspeed)
        _forget_deepspeed_config()
        raise PipelineError(_missing_package_message(exc)) from None
    if unknown:
        raise PipelineError(_unknown_keys_message(unknown, parser, file_tokens, config_path))
    return tuple(parsed)


def _default_launcher_variables() -> None:
    """`python train.py CONFIG --deepspeed FILE` without a launcher: the variables a launcher sets, for one process
    on this machine. DeepSpeed reads them to start its process group; without them it goes to MPI discovery (which
    needs mpi4py) on a GPU, and on a CPU the run died at its first barrier."""
    if any(key in os.environ for key in ("RANK", "OMPI_COMM_WORLD_SIZE", "SLURM_PROCID")):
        return  # a launcher (accelerate, deepspeed, torchrun, mpirun, srun) set them
    if importlib.util.find_spec("deepspeed") is None:
        return  # the parse says what to install
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))  # a free port for the process group's store
        port = probe.getsockname()[1]
    os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1"})
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(port))


def _skip_unused_deepspeed_ops() -> None:
    """On CPU processes DeepSpeed's process group compiles a shared-memory all-reduce (about 70 s with a C++
    compiler, once per machine) that only its tensor-parallel inference calls; ZeRO's collectives and this pipeline
    go through torch.distributed. Marked unbuildable before the engine starts, it is neither compiled nor needed."""
    if importlib.util.find_spec("deepspeed") is None:
        return  # the parse says what to install
    from deepspeed import ops
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() == "cpu":
        ops.__compatible_ops__["deepspeed_shm_comm"] = False


def _forget_deepspeed_config() -> None:
    """A TrainingArguments that failed half-way through DeepSpeed's setup leaves its config registered for the whole
    process, and every later from_pretrained then asks it about ZeRO-3: unregister it."""
    try:
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config
    except ImportError:
        return
    unset_hf_deepspeed_config()


def _missing_package_message(exc: ImportError) -> str:
    """One line for a setting whose package is not installed, with the install command where the pipeline has one."""
    text = " ".join(str(exc).split())
    if "deepspeed" in text:
        return "deepspeed: needs the deepspeed package: pip install .[deepspeed] (a CUDA machine; see docs/models.md)"
    return f"a setting needs a package that is not installed: {text}"


def _unknown_keys_message(
    unknown: list[str], parser: HfArgumentParser, file_tokens: list[str], config_path: str | None
) -> str:
    """Name the first unknown key, where it came from, and the closest known key (abbreviations are not accepted)."""
    key = next((token for token in unknown if token.startswith("--")), None)
    if key is None:
        return f"unexpected argument {unknown[0]!r} (keys are given as --key value)"
    known = [option[2:] for option in parser._option_string_actions if option.startswith("--")]
    close = difflib.get_close_matches(key.lstrip("-"), known, n=1, cutoff=0.5)
    close = close or [name for name in known if name.startswith(key.lstrip("-"))][:1]
    where = config_path if config_path and key in file_tokens else "command line"
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"{where}: unknown key {key.lstrip('-')!r}{hint}"


def _check_input_files(paths: list[str], what: str) -> None:
    """At least one input file, each of them present; `what` names the files in the empty-list message."""
    if not paths:
        raise PipelineError(f"train_files: give at least one {what}")
    for path in paths:
        if not os.path.isfile(path):
            raise PipelineError(f"{path}: file not found")


def validate_training_values(training_args: TrainingArguments) -> None:
    """Values TrainingArguments accepts but that fail (or silently do nothing) once training has started."""
    checks = [
        ("seed", training_args.seed >= 0, "must be >= 0"),
        # beyond 1 an optimizer step moves every weight by more than its own size: training can only diverge
        (
            "learning_rate",
            _is_finite(training_args.learning_rate) and 0 < training_args.learning_rate <= _MAX_LEARNING_RATE,
            f"must be in (0, {_MAX_LEARNING_RATE:g}]",
        ),
        ("per_device_train_batch_size", training_args.per_device_train_batch_size >= 1, "must be at least 1"),
        ("per_device_eval_batch_size", training_args.per_device_eval_batch_size >= 1, "must be at least 1"),
        ("gradient_accumulation_steps", training_args.gradient_accumulation_steps >= 1, "must be at least 1"),
        (
            "num_train_epochs",
            _is_finite(training_args.num_train_epochs)
            and (training_args.num_train_epochs > 0 or training_args.max_steps > 0),
            "must be a finite number > 0 (or set max_steps)",
        ),
        (
            "weight_decay",
            _is_finite(training_args.weight_decay) and training_args.weight_decay >= 0,
            "must be a finite number >= 0",
        ),
        (
            "max_grad_norm",
            training_args.max_grad_norm is None or not math.isnan(training_args.max_grad_norm),
            "must be a number",
        ),
    ]
    for key, ok, message in checks:
        if not ok:
            raise PipelineError(f"{key}: {message}, got {getattr(training_args, key)}")


def _validate_preprocessing(args: PreprocessingArguments) -> None:
    if args.input_format not in INPUT_FORMATS:
        raise PipelineError(f"input_format: {args.input_format!r} is not one of {', '.join(INPUT_FORMATS)}")
    if args.max_seq_length < 8:
        raise PipelineError(f"max_seq_length: must be at least 8, got {args.max_seq_length}")
    fields = sorted(name for _, name, _, _ in string.Formatter().parse(args.input_template) if name is not None)
    if fields != ["target", "text"]:
        raise PipelineError(
            f"input_template: must hold {{text}} and {{target}} once each and no other field, got "
            f"{args.input_template!r}"
        )
    if args.offline_pretokenizer not in PRETOKENIZERS:
        raise PipelineError(
            f"offline_pretokenizer: {args.offline_pretokenizer!r} is not one of {', '.join(PRETOKENIZERS)}"
        )


def _validate_loss(loss_args: LossArguments) -> None:
    if loss_args.loss_reduction not in ("mean", "sum"):
        raise PipelineError(f"loss_reduction: {loss_args.loss_reduction!r} is not mean or sum")
    if loss_args.parsed_pos_weight() is not None and loss_args.loss != "bce":
        raise PipelineError(f"pos_weight: only the bce loss takes a positive-class weight (loss is {loss_args.loss})")


def _check_time_budget(budget: float | None) -> None:
    if budget is not None and not (_is_finite(budget) and 0 < budget <= _MAX_TIME_BUDGET_MINUTES):
        raise PipelineError(
            f"time_budget_minutes: must be a number of minutes in (0, {_MAX_TIME_BUDGET_MINUTES}] (a week), "
            f"got {budget}"
        )


def _is_finite(value) -> bool:
    """A real number, neither NaN nor infinite (the parser turns "nan" and "inf" into floats without a word)."""
    return isinstance(value, (int, float)) and math.isfinite(value)


_MAX_LEARNING_RATE = 1.0
# fgm: the L2 norm of the embedding perturbation (papers use 0.1-1); awp: relative to each weight's norm (1 = the
# weight's own size)
_MAX_ADVERSARIAL_EPSILON = {"fgm": 1000.0, "awp": 1.0}


def _validate_techniques(args: TechniqueArguments) -> None:
    checks = [
        ("layerwise_lr_decay", 0 < args.layerwise_lr_decay <= 1, "must be in (0, 1] (1 = off)"),
        ("ema_decay", 0 <= args.ema_decay < 1, "must be in [0, 1) (0 = off)"),
        ("swa_epochs", args.swa_epochs >= 0, "must be >= 0 (0 = off)"),
        (
            "rdrop_alpha",
            _is_finite(args.rdrop_alpha) and args.rdrop_alpha >= 0,
            "must be a finite number >= 0 (0 = off)",
        ),
        ("multi_sample_dropout", args.multi_sample_dropout >= 1, "must be at least 1 (1 = off)"),
        ("adversarial", args.adversarial in ADVERSARIAL_METHODS, f"must be one of {', '.join(ADVERSARIAL_METHODS)}"),
        (
            "adversarial_epsilon",
            args.adversarial_epsilon is None
            or (
                _is_finite(args.adversarial_epsilon)
                and 0 < args.adversarial_epsilon <= _MAX_ADVERSARIAL_EPSILON.get(args.adversarial, math.inf)
            ),
            f"must be in (0, {_MAX_ADVERSARIAL_EPSILON.get(args.adversarial, math.inf):g}] for {args.adversarial}",
        ),
        ("pseudo_label_threshold", 0.5 < args.pseudo_label_threshold < 1, "must be in (0.5, 1)"),
    ]
    for key, ok, message in checks:
        if not ok:
            raise PipelineError(f"{key}: {message}, got {getattr(args, key)!r}")
    if args.adversarial_epsilon is not None and args.adversarial == "none":
        raise PipelineError("adversarial_epsilon: set adversarial (fgm or awp) too; alone it does nothing")


def field_defaults(*classes) -> dict[str, object]:
    """Each settings dataclass field's default (what a key left out means): how a run written before a key existed
    is compared with a command that has it (`run_folder.config_difference`)."""
    defaults: dict[str, object] = {}
    for cls in classes:
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                defaults[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                defaults[f.name] = f.default_factory()
    return defaults


def _trainer_defaults(output_dir: str) -> dict:
    """`TrainingArguments`' defaults as `to_dict` writes them, leaving the process as it was. Building one sets up
    devices anew, which resets accelerate's process-wide state, and under a DeepSpeed launcher registers its own
    DeepSpeed config as the process's (transformers asks it whether ZeRO-3 partitions new models). The resolved
    config is built on the main process alone: under DeepSpeed the state it left said one process (the main process
    skipped the barriers its replicas waited at: train.py hung under ZeRO-2), and the config it registered died with
    it (the main process built its models whole while the others partitioned theirs: ZeRO-3 hung)."""
    from transformers.integrations import deepspeed as hf_deepspeed

    states = (PartialState, AcceleratorState, GradientState)
    saved = [dict(state._shared_state) for state in states]
    registered = hf_deepspeed._hf_deepspeed_config_weak_ref
    # its devices are not the run's (no use_cpu): under a launcher it would warn that the process group is not its own
    quieted = logging.getLogger("transformers.training_args")
    level = quieted.level
    quieted.setLevel(logging.ERROR)
    try:
        return training_arguments_class()(output_dir=output_dir).to_dict()
    finally:
        quieted.setLevel(level)
        for state, values in zip(states, saved):
            state._shared_state.clear()
            state._shared_state.update(values)
        hf_deepspeed._hf_deepspeed_config_weak_ref = registered


def _resolved_config(*args_list) -> dict:
    """A flat mapping that, saved as YAML, reproduces the run: all pipeline keys and every non-default Trainer key."""
    *pipeline_args, training_args = args_list
    config: dict = {}
    for args in pipeline_args:
        config.update(dataclasses.asdict(args))
    defaults = _trainer_defaults(training_args.output_dir)
    init_fields = {f.name for f in dataclasses.fields(training_arguments_class()) if f.init}
    for key, value in training_args.to_dict().items():
        if key in init_fields and (value != defaults.get(key) or key in TRAINING_DEFAULTS):
            config[key] = value
    return config
