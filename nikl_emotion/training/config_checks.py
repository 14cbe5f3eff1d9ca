"""The checks of a run's settings that need more than the settings: the backend a `model_name_or_path` names (a
hub folder's files, an offline or n-gram spec), a loss's parameters (checked by the loss classes themselves),
kiwipiepy for morpheme segmentation, the files a run reads and writes, a pseudo-label run. `parse_config` (the
settings parsed, then these checks) is what the commands call; `config.py` stays a leaf any layer can read.
"""

from __future__ import annotations

import os

from transformers import TrainingArguments

from nikl_emotion.backends.budget_clock import check_clock_schedule
from nikl_emotion.backends.engines import check_engine, engine_of
from nikl_emotion.backends.heads import TARGET_MASK, head_named
from nikl_emotion.backends.losses import LOSSES, loss_arguments_class, loss_named
from nikl_emotion.backends.precision import HALF_PRECISION_KERNELS, check_autocast_device
from nikl_emotion.backends.registry import backend_for
from nikl_emotion.base.config import (
    PIPELINE_ARGUMENT_CLASSES,
    TRAINING_DEFAULTS,
    LossArguments,
    ModelArguments,
    PreprocessingArguments,
    RunSettings,
    TechniqueArguments,
    parse_arguments,
    validate_training_values,
)
from nikl_emotion.base.errors import PipelineError
from nikl_emotion.folders.run_folder import is_run_file
from nikl_emotion.text.morphemes import kiwi
from nikl_emotion.training.pseudo_labels import check_pseudo_label_run

__all__ = [
    "parse_config",
    "validate",
    "validate_reporting",
    "argument_classes",
    "check_model_name",
    "check_settings_resources",
    "check_loss_parameters",
    "check_pretokenizer",
]


def parse_config(argv: list[str]) -> RunSettings:
    """`[CONFIG.yaml] [--key value ...]` -> the run's validated settings."""
    check_engine(engine_of())  # the launcher's, before TrainingArguments builds DeepSpeed's config from it
    settings = RunSettings(*parse_arguments(argv, argument_classes(), TRAINING_DEFAULTS))
    validate(settings)
    return settings


def validate(settings: RunSettings) -> None:
    """What no single dataclass can check alone (each validates itself in `__post_init__`): the Trainer's settings
    and how they meet the pipeline's, and what the settings name outside themselves (`check_settings_resources`).
    Fails before any work starts, with a message naming the key."""
    model_args, data_args, training_args = settings.model, settings.data, settings.training
    loss_args, technique_args = settings.loss, settings.techniques
    check_settings_resources(model_args, data_args, loss_args, technique_args)
    engine = engine_of(training_args)
    check_engine(engine, technique_args, model_args.lora_r)
    check_autocast_device(training_args, engine_casts_weights=engine.name == "deepspeed")
    _check_attention_precision(model_args.loading.attn_implementation, training_args)
    validate_reporting(training_args)
    validate_training_values(training_args)
    _check_inputs_outside_run(training_args.output_dir, [*data_args.train_files, *filter(None, [data_args.test_file])])
    check_pretokenizer(model_args.model_name_or_path, data_args.offline_pretokenizer)
    _check_classifier_head(model_args, data_args)
    _check_adapters(model_args)
    _validate_techniques_with(technique_args, model_args, training_args)
    _check_early_stopping_split(settings.stopping.early_stopping_split, model_args.model_name_or_path)
    _check_time_budget(settings.budget.time_budget_minutes, model_args.model_name_or_path, training_args)
    if training_args.label_smoothing_factor:
        raise PipelineError(
            "label_smoothing_factor: the Trainer's smoothing is for single-label cross-entropy and would be ignored "
            "by a multi-label loss; use label_smoothing instead"
        )
    if training_args.eval_strategy == "no" or training_args.eval_strategy != training_args.save_strategy:
        raise PipelineError(
            "eval_strategy and save_strategy must be the same (epoch or steps): "
            "the best checkpoint is chosen on validation micro-F1"
        )
    if training_args.metric_for_best_model not in (
        "micro_f1",
        "eval_micro_f1",
        "macro_f1",
        "eval_macro_f1",
        "loss",
        "eval_loss",
    ):
        raise PipelineError(
            f"metric_for_best_model: {training_args.metric_for_best_model!r} is not micro_f1, macro_f1 or loss"
        )


def _check_attention_precision(kernel: str | None, training_args) -> None:
    """A flash kernel computes in bf16/fp16 only: trained without either, float32 tensors reach it and the first
    forward pass crashes. TrainingArguments' mixed precision is `bf16`/`fp16` or, with neither, the launcher's."""
    if kernel in HALF_PRECISION_KERNELS and training_args.mixed_precision not in ("bf16", "fp16"):
        raise PipelineError(
            f"attn_implementation: {kernel} computes in bf16/fp16 only; set bf16: true (or fp16: true), or use sdpa"
        )


def _check_early_stopping_split(share: float, model_name_or_path: str) -> None:
    if share and not backend_for(model_name_or_path).supports_early_stopping_split:
        raise PipelineError(
            f"early_stopping_split: {model_name_or_path} chooses no epoch, so its out-of-fold probabilities are "
            "unseen by any choice already; drop the key"
        )


def _check_time_budget(budget: float | None, model_name_or_path: str, training_args) -> None:
    if budget is None:
        return
    if not backend_for(model_name_or_path).supports_time_budget:
        raise PipelineError(
            f"time_budget_minutes: {model_name_or_path} has no schedule to fit into minutes (a fold takes "
            "seconds); drop the key"
        )
    check_clock_schedule(training_args)  # the schedule must be a function of the step to follow the clock


def _check_classifier_head(model_args: ModelArguments, preprocessing_args: PreprocessingArguments) -> None:
    """A registered head (backends/heads.py) that the backend builds; a head that reads the target's tokens needs an
    input format that shows the target."""
    head = head_named(model_args.classifier_head)
    backend = backend_for(model_args.model_name_or_path)
    if model_args.classifier_head not in (backend.heads or ("cls",)):
        raise PipelineError(
            f"classifier_head: {model_args.classifier_head} is a head over an encoder's token states; "
            f"{model_args.model_name_or_path} is trained by the {backend.name} backend, which builds "
            f"{' and '.join(backend.heads) or 'no head'} (use classifier_head: cls)"
        )
    if TARGET_MASK in head.inputs and preprocessing_args.input_format in ("text", "instruction"):
        raise PipelineError(
            f"classifier_head: {model_args.classifier_head} pools the target's tokens, which "
            f"input_format: {preprocessing_args.input_format} does not mark; choose pair, marker or prompt"
        )


def _check_adapters(model_args: ModelArguments) -> None:
    """LoRA and 4-bit weights: the backend's own check (one that trains them checks what they need: peft,
    bitsandbytes; the others refuse them)."""
    if model_args.lora_r:
        backend_for(model_args.model_name_or_path).check_lora(model_args)


def _check_inputs_outside_run(output_dir: str, paths: list[str]) -> None:
    """An input file must not be one of the files the run writes or `--overwrite` deletes (OUT/submission.jsonl,
    OUT/fold_K/...): it would be replaced by the run's own output."""
    run = os.path.realpath(output_dir)
    for path in paths:
        relative = os.path.relpath(os.path.realpath(path), run)
        if relative.startswith(os.pardir) or os.path.isabs(relative):
            continue
        if is_run_file(relative.split(os.sep)[0]):
            raise PipelineError(
                f"{path}: this input lies where the run in {output_dir} writes its own files; "
                "move it or use another output_dir"
            )


def validate_reporting(training_args: TrainingArguments) -> None:
    """`report_to: tensorboard` needs the optional tensorboard package: say so before any work starts."""
    from transformers.integrations import is_tensorboard_available

    if "tensorboard" in (training_args.report_to or []) and not is_tensorboard_available():
        raise PipelineError("report_to: tensorboard needs the tensorboard package: pip install tensorboard")


def _validate_techniques_with(
    args: TechniqueArguments, model_args: ModelArguments, training_args: TrainingArguments
) -> None:
    """What the techniques need from the rest of the configuration."""
    if not backend_for(model_args.model_name_or_path).supports_techniques:
        trainer_only = [key for key in args.active() if key != "pseudo_label_run"]
        if trainer_only:
            raise PipelineError(
                f"{trainer_only[0]}: a fine-tuning technique of encoders; "
                f"{model_args.model_name_or_path} has no encoder to apply it to"
            )
    epochs = training_args.num_train_epochs if training_args.max_steps <= 0 else None
    if args.swa_epochs and epochs is not None and args.swa_epochs > epochs:
        raise PipelineError(
            f"swa_epochs: averages the last {args.swa_epochs} epochs of {epochs:g}; it must not exceed num_train_epochs"
        )
    if args.pseudo_label_run is not None and os.path.realpath(args.pseudo_label_run) == os.path.realpath(
        training_args.output_dir
    ):
        raise PipelineError("pseudo_label_run: must be another run than this one (output_dir)")


def check_model_name(model_name_or_path: str) -> None:
    """A name the backend that trains it accepts (an n-gram or offline spec that exists, a model folder or hub name
    that can be one)."""
    backend_for(model_name_or_path).check_spec(model_name_or_path)


def check_settings_resources(
    model_args: ModelArguments,
    preprocessing_args: PreprocessingArguments,
    loss_args: LossArguments | None = None,
    technique_args: TechniqueArguments | None = None,
) -> None:
    """What each settings dataclass names outside itself: the model, kiwipiepy, the losses' parameters, the
    pseudo-label run."""
    check_model_name(model_args.model_name_or_path)
    head_named(model_args.classifier_head)  # a misspelt head stops every program, post-training included
    backend_for(model_args.model_name_or_path).check_loading(model_args.model_name_or_path, model_args.loading)
    if preprocessing_args.offline_pretokenizer == "kiwi":
        kiwi()  # a missing kiwipiepy stops the run before any work, with the pip command
    if loss_args is not None:
        check_loss_parameters(loss_args)
    if technique_args is not None and technique_args.pseudo_label_run is not None:
        check_pseudo_label_run(technique_args.pseudo_label_run)


def check_loss_parameters(loss_args: LossArguments) -> None:
    """The loss is a registered one, and every registered loss's keys hold values its class accepts (a wrong value
    should not wait for the day that loss is chosen); the message names the config key."""
    loss_named(loss_args.loss)
    for loss in LOSSES.values():
        loss.check(loss_args)


def argument_classes() -> tuple:
    """The dataclasses `train.py`'s settings are parsed into: the pipeline's (the losses' keys included), then
    `TrainingArguments`."""
    pipeline = (loss_arguments_class() if cls is LossArguments else cls for cls in PIPELINE_ARGUMENT_CLASSES)
    return (*pipeline, TrainingArguments)


def check_pretokenizer(backbone: str, pretokenizer: str) -> None:
    """The pre-tokenizer must be the one the backbone's tokenizer was trained with: a vocabulary learned on
    morpheme-segmented text sees other pieces in unsegmented text, and the reverse. Morpheme segmentation exists for
    the offline backbones (whose tokenizer is trained here) and the folders post-trained from them; a hub
    tokenizer never learned segmented text."""
    learned = backend_for(backbone).pretokenizer_of(backbone)
    if learned is not None and learned != pretokenizer:
        where = (
            f"{backbone} was post-trained with offline_pretokenizer: {learned}"
            if learned != "none"
            else f"{backbone}'s tokenizer was not trained on morpheme-segmented text (offline_pretokenizer "
            "applies to offline:* backbones and the folders post-trained from them)"
        )
        raise PipelineError(
            f"offline_pretokenizer: {pretokenizer} does not fit the backbone: {where}; set "
            f"offline_pretokenizer: {learned}"
        )
