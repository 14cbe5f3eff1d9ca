"""Domain-adaptive post-training: continue masked-LM training of a backbone on the task's own unlabelled text.

Any jsonl in the task format works (train, dev, test; labels are ignored). Rows are cleaned and encoded exactly as
fine-tuning will see them (same cleaning options, same text/target input format), so the encoder adapts to the
inputs it is later classified on. For the offline backbone this is its pretraining: a tokenizer trained on the same
texts, a randomly initialised encoder, then MLM. The result is saved with `save_pretrained` (model, tokenizer,
`preprocessing.json`, `post_train.json`) and `train.py --model_name_or_path DIR` fine-tunes it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import os
import shutil
import time

import numpy as np
import torch
from accelerate import PartialState
from datasets import Dataset
from transformers import (
    DataCollatorForLanguageModeling,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
    TrainingArguments,
    set_seed,
)

from nikl_emotion.backends.budget_clock import (
    SAFETY,
    BudgetClock,
    ClockScheduleMixin,
    carried_out,
    check_clock_schedule,
    slowest,
)
from nikl_emotion.backends.engines import check_post_training_engine, engine_of
from nikl_emotion.backends.fold_backend import PostTrainer
from nikl_emotion.backends.registry import backend_for, offered
from nikl_emotion.backends.trainer_parts import LengthListSamplerMixin, keep_tensorboard_logs, measure_step_seconds
from nikl_emotion.base.config import (
    POST_TRAIN_DEFAULTS,
    MLMArguments,
    ModelArguments,
    PostTrainDataArguments,
    PostTrainSettings,
    field_defaults,
    parse_arguments,
    validate_training_values,
)
from nikl_emotion.base.errors import PipelineError
from nikl_emotion.base.fileio import write_json_atomic
from nikl_emotion.base.locking import exclusive
from nikl_emotion.base.vocabulary import MAX_UNKNOWN_RATE
from nikl_emotion.folders.folder_kind import POST_TRAIN_OWNER, check_output_folder, prepare_output_dir
from nikl_emotion.folders.run_folder import PostTrainFolder, input_digests, last_complete_checkpoint, read_mapping
from nikl_emotion.text.batching import padded_width
from nikl_emotion.text.encoding import tokenize_batch
from nikl_emotion.text.preprocessing import Preprocessing, TaskFiles, check_unknown_rate, load_task_files
from nikl_emotion.training.config_checks import check_pretokenizer, check_settings_resources, validate_reporting
from nikl_emotion.training.packing import pack_rows
from nikl_emotion.training.step_plan import describe, describe_carried_out, plan_steps

__all__ = [
    "describe_post_training",
    "parse_post_train_config",
    "HELD_OUT_MLM_PROBABILITY",
    "run_post_training",
    "post_train",
]


logger = logging.getLogger(__name__)

HELD_OUT_MLM_PROBABILITY = 0.15  # the held-out loss's masking rate, whatever the training's: runs compare


def parse_post_train_config(argv: list[str]) -> PostTrainSettings:
    """`CONFIG [--key value ...]` -> post-training's validated settings."""
    classes = (ModelArguments, PostTrainDataArguments, MLMArguments, TrainingArguments)
    settings = PostTrainSettings(*parse_arguments(argv, classes, POST_TRAIN_DEFAULTS))
    model_args, data_args, training_args = settings.model, settings.data, settings.training
    check_settings_resources(model_args, data_args)
    check_post_training_engine(engine_of(training_args))
    validate_reporting(training_args)
    validate_training_values(training_args)
    check_pretokenizer(model_args.model_name_or_path, data_args.offline_pretokenizer)
    _post_trainer_of(model_args.model_name_or_path).check(model_args, settings.objective.objective)
    if data_args.validation_fraction == 0 and training_args.eval_strategy != "no":
        raise PipelineError("validation_fraction 0 leaves nothing to evaluate: set eval_strategy: no as well")
    if settings.objective.time_budget_minutes is not None:
        check_clock_schedule(training_args)
    if settings.objective.objective == "rtd" and not settings.objective.masked_positions_head:
        raise PipelineError(
            "masked_positions_head: false runs MLM's dense head; rtd's generator predicts the masked positions only"
        )
    return settings


def _post_trainer_of(model_name_or_path: str) -> PostTrainer:
    """The post-trainer of the backend that trains `model_name_or_path`; refused where it offers none."""
    refusal = f"model_name_or_path: {model_name_or_path} is trained by the {{backend}} backend, which offers no "
    why = "post_train.py continues the pretraining of an encoder"
    return offered(backend_for(model_name_or_path), "post_trainer", f"{refusal}post-training ({why})")


def _mlm_encode(
    cleaned: Dataset, tokenizer, preprocessing: Preprocessing, offsets: bool, max_unknown_rate: float = MAX_UNKNOWN_RATE
) -> Dataset:
    """Rows encoded as fine-tuning encodes them (text and target), with `length`; offsets for whole-word masking."""

    def encode_batch(batch):
        encoded = tokenize_batch(
            batch,
            tokenizer,
            preprocessing.input_format,
            preprocessing.max_seq_length,
            input_template=preprocessing.input_template,
            return_offsets_mapping=offsets,
        )
        return encoded

    keep = ["input_ids", "attention_mask", "token_type_ids", "length", "offset_mapping"]
    encoded = cleaned.map(encode_batch, batched=True, desc="tokenizing for MLM")
    check_unknown_rate(encoded, tokenizer, max_unknown_rate=max_unknown_rate)
    return encoded.select_columns([c for c in keep if c in encoded.column_names])


class _MLMCollator(DataCollatorForLanguageModeling):
    """Drops `length` (kept in the dataset for the length-grouped sampler) and pads what the tokenizer's `pad` leaves
    ragged to the batch width before masking: `offset_mapping` (whole-word masking) and `position_ids` (packed
    blocks)."""

    _RAGGED = {"offset_mapping": [0, 0], "position_ids": 0}

    def __call__(self, features, return_tensors=None):
        features = [{k: v for k, v in f.items() if k != "length"} for f in features]
        ragged = {name: fill for name, fill in self._RAGGED.items() if name in features[0]}
        if ragged:
            width = padded_width(np.array([len(f["input_ids"]) for f in features]), self.pad_to_multiple_of)
            features = [
                {**f, **{name: list(f[name]) + [fill] * (width - len(f[name])) for name, fill in ragged.items()}}
                for f in features
            ]
        return super().__call__(features, return_tensors)


class _PostTrainer(ClockScheduleMixin, LengthListSamplerMixin, Trainer):
    """With a `BudgetClock` (time_budget_minutes), the learning-rate schedule follows the clock, not the steps; the
    held-out rows are masked by `eval_collator` (at the fixed held-out rate), the training rows by `data_collator`."""

    eval_collator: DataCollatorForLanguageModeling | None = None

    def evaluate(self, *args, **kwargs):
        if self.eval_collator is None:
            return super().evaluate(*args, **kwargs)
        training_collator, self.data_collator = self.data_collator, self.eval_collator
        try:
            return super().evaluate(*args, **kwargs)
        finally:
            self.data_collator = training_collator


@dataclasses.dataclass
class _PostTrainInputs:
    """What the post-training Trainer learns from: the encoder, its tokenizer, the encoded rows and the held-out
    rows (None with `validation_fraction: 0`)."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    train_rows: Dataset
    eval_rows: Dataset | None


def run_post_training(settings: PostTrainSettings) -> dict | None:
    """Post-train the encoder on the files' text and save it to `output_dir`; returns the summary (None on the
    other processes of `accelerate launch`)."""
    _post_trainer_of(settings.model.model_name_or_path)
    started = time.monotonic()
    state = PartialState()
    folder = PostTrainFolder(settings.training.output_dir)
    check_output_folder(folder.root, "post-training")  # before any work (the lock file is created next)
    # the text only: labels unused
    files = load_task_files(settings.data, settings.training, train_labels="optional")
    with contextlib.ExitStack() as held:
        if state.is_main_process:  # one post-training per folder at a time
            held.enter_context(exclusive(folder.lock, folder.root))
            defaults = field_defaults(ModelArguments, PostTrainDataArguments, MLMArguments)
            inputs = input_digests(settings.data.train_files)
            prepare_output_dir(
                folder.root, settings.resolved(), settings.objective.overwrite, inputs, defaults, POST_TRAIN_OWNER
            )
        state.wait_for_everyone()
        if folder.is_finished():  # post_train.json is written last: this configuration is post-trained already
            logger.info(
                "post-training: %s is complete (%s); nothing to do", folder.root, os.path.basename(folder.summary)
            )
            return read_mapping(folder.summary)
        return post_train(settings, files, folder, started)


def post_train(settings: PostTrainSettings, files: TaskFiles, folder: PostTrainFolder, started: float) -> dict | None:
    """The post-training itself (the folder claimed): model, rows, the time budget's plan, training, the saved
    folder; returns the summary on the main process."""
    objective = settings.objective
    set_seed(settings.training.seed)
    texts = [t for t in files.cleaned["text"] if t]
    model, tokenizer = _post_trainer_of(settings.model.model_name_or_path).model_and_tokenizer(
        settings, texts, files.preprocessing
    )
    inputs = _PostTrainInputs(
        model, tokenizer, *_post_training_rows(settings, files.cleaned, tokenizer, files.preprocessing)
    )
    plan = clock = None
    if objective.time_budget_minutes is not None:
        plan = _budget_plan(inputs, settings, folder, started)
        settings = dataclasses.replace(
            settings, training=dataclasses.replace(settings.training, max_steps=plan["max_steps"])
        )
        set_seed(settings.training.seed)  # the measured steps drew random numbers: the run starts as it would without
        ends_at = started + objective.time_budget_minutes * 60 * SAFETY
        clock = BudgetClock(plan["training_seconds"], ends_at=ends_at)
        clock.reserve_seconds = plan["evaluation_seconds"]
    trainer = _post_trainer(inputs, settings, clock)
    before, after = _train_with_eval_losses(trainer, folder, has_eval=inputs.eval_rows is not None)
    if not trainer.is_world_process_zero():
        return None
    summary = {
        "base_model": settings.model.model_name_or_path,
        "objective": objective.objective,
        "files": list(settings.data.train_files),
        "train_rows": len(inputs.train_rows),
        "eval_rows": 0 if inputs.eval_rows is None else len(inputs.eval_rows),
        "steps": trainer.state.global_step,
        "eval_loss_before": before,
        "eval_loss_after": after,
        # the RTD loss mixes the generator's cross-entropy with the weighted discriminator loss: no perplexity
        "perplexity_after": None if after is None or objective.objective != "mlm" else math.exp(min(after, 50)),
        "seconds": round(time.monotonic() - started, 1),
    }
    if plan is not None:
        summary["time_budget"] = {**plan, "carried_out": carried_out(clock, trainer.state)}
        logger.info("post-training: %s", describe_carried_out(summary["time_budget"]))
    _save_post_trained(folder, model, tokenizer, files.preprocessing, summary)
    return summary


def _post_training_rows(
    settings: PostTrainSettings, cleaned: Dataset, tokenizer, preprocessing: Preprocessing
) -> tuple[Dataset, Dataset | None]:
    """(training rows, held-out rows or None): encoded as fine-tuning encodes them, rows cleaned to nothing
    dropped, `validation_fraction` held out to measure the MLM loss before and after."""
    training_args, whole_words = settings.training, settings.objective.whole_word_mask
    with training_args.main_process_first(desc="tokenizing"):
        encoded = _mlm_encode(
            cleaned, tokenizer, preprocessing, offsets=whole_words, max_unknown_rate=settings.model.max_unknown_rate
        )
    # a row cleaned to nothing encodes as [CLS] [SEP]: nothing to learn from
    encoded = encoded.filter(
        lambda lengths: [n > 2 for n in lengths], input_columns="length", batched=True, desc="dropping empty rows"
    )
    held_out = None
    if settings.data.validation_fraction > 0:
        split = encoded.train_test_split(test_size=settings.data.validation_fraction, seed=training_args.seed)
        encoded, held_out = split["train"], split["test"]
    if settings.objective.pack_sequences:
        with training_args.main_process_first(desc="packing"):
            encoded = pack_rows(encoded, preprocessing.max_seq_length)
    return encoded, held_out


def _budget_plan(
    inputs: _PostTrainInputs, settings: PostTrainSettings, folder: PostTrainFolder, started: float
) -> dict:
    """The steps that fit `time_budget_minutes` on this machine, measured on a few real steps; a resumed run reads
    the plan it started with (its schedule must not change)."""
    plan = read_mapping(folder.time_budget)
    steps = plan.get("max_steps")
    if plan and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):  # a file edited or damaged
        raise PipelineError(
            f"{folder.time_budget}: max_steps: expected a whole number >= 1, got {steps!r}; delete "
            "the file to measure the plan again"
        )
    budget, training_args = settings.objective.time_budget_minutes, settings.training
    if plan.get("time_budget_minutes") != budget or "training_seconds" not in plan:  # none, another, or older
        probe = _post_trainer(inputs, settings)
        step_seconds = measure_step_seconds(probe)
        steps_per_epoch = max(1, len(probe.get_train_dataloader()) // training_args.gradient_accumulation_steps)
        # a held-out pass: forward only (~1/3 of a training step's work per row)
        rows_per_step = training_args.train_batch_size * training_args.gradient_accumulation_steps
        eval_rows = 0 if inputs.eval_rows is None else len(inputs.eval_rows)
        eval_seconds = eval_rows * step_seconds / rows_per_step / 3
        plan = plan_steps(budget, time.monotonic() - started, step_seconds, steps_per_epoch, eval_seconds)
        if probe.is_world_process_zero():
            write_json_atomic(folder.time_budget, plan)
        del probe
    logger.info("post-training: %s", describe(plan))
    return plan


def _post_trainer(
    inputs: _PostTrainInputs, settings: PostTrainSettings, clock: BudgetClock | None = None
) -> _PostTrainer:
    """The post-training Trainer: checkpoints in OUT/checkpoints, logs in OUT/runs; MLM with the vocabulary head on
    masked positions, or RTD (generator + the discriminator `model`); with `clock`, a schedule on the clock."""
    training_args, mlm_args, model = settings.training, settings.objective, inputs.model
    folder = PostTrainFolder(training_args.output_dir)
    args = dataclasses.replace(
        training_args, output_dir=folder.checkpoints, remove_unused_columns=False, prediction_loss_only=True
    )
    model = _post_trainer_of(settings.model.model_name_or_path).training_model(model, mlm_args)
    collator, eval_collator = (
        _MLMCollator(
            inputs.tokenizer,
            mlm_probability=probability,
            whole_word_mask=mlm_args.whole_word_mask,
            pad_to_multiple_of=8 if torch.cuda.is_available() else None,
            seed=training_args.seed,
        )
        for probability in (mlm_args.mlm_probability, HELD_OUT_MLM_PROBABILITY)
    )
    trainer = _PostTrainer(
        model=model,
        args=args,
        train_dataset=inputs.train_rows,
        eval_dataset=inputs.eval_rows,
        processing_class=inputs.tokenizer,
        data_collator=collator,
    )
    keep_tensorboard_logs(trainer, folder.runs)
    trainer.eval_collator = eval_collator
    if clock is not None:
        clock.agree = functools.partial(slowest, trainer.accelerator)
        trainer.budget_clock = clock
        trainer.add_callback(clock)
    return trainer


def _train_with_eval_losses(
    trainer: _PostTrainer, folder: PostTrainFolder, has_eval: bool
) -> tuple[float | None, float | None]:
    """Train (resuming from the last complete checkpoint); the held-out MLM loss before and after. The loss before
    is measured once, at the start, and kept on disk so a resumed run still reports it."""
    if trainer.is_world_process_zero():
        last_complete_checkpoint(folder.checkpoints)  # prunes a half-written checkpoint
    trainer.accelerator.wait_for_everyone()
    resume = last_complete_checkpoint(folder.checkpoints)
    before = read_mapping(folder.eval_loss_before).get("eval_loss")
    if has_eval and resume is None:
        began = time.monotonic()
        before = trainer.evaluate()["eval_loss"]
        if trainer.budget_clock is not None:  # the final evaluation costs what this one did
            trainer.budget_clock.reserve_seconds = time.monotonic() - began
        if trainer.is_world_process_zero():
            write_json_atomic(folder.eval_loss_before, {"eval_loss": before})
    if resume:
        logger.info("post-training: resuming from %s", os.path.basename(resume))
    trainer.train(resume_from_checkpoint=resume)
    return before, trainer.evaluate()["eval_loss"] if has_eval else None


def _save_post_trained(folder: PostTrainFolder, model, tokenizer, preprocessing: Preprocessing, summary: dict) -> None:
    """The model folder train.py loads, `post_train.json` last; the Trainer's checkpoints go."""
    model.save_pretrained(folder.root)  # the inner model, so the folder loads with from_pretrained
    tokenizer.save_pretrained(folder.root)
    preprocessing.save(folder.root)
    write_json_atomic(folder.summary, summary)
    shutil.rmtree(folder.checkpoints, ignore_errors=True)
    for leftover in (folder.eval_loss_before, folder.time_budget):  # their content is in the summary
        with contextlib.suppress(FileNotFoundError):
            os.remove(leftover)


def describe_post_training(summary: dict, folder: str) -> str:
    """post_train.json's summary as `post_train.py` prints it."""
    before, after = summary["eval_loss_before"], summary["eval_loss_after"]
    budget = summary.get("time_budget")
    took = f" in {summary['seconds'] / 60:.1f} min" + (
        f" of a {budget['time_budget_minutes']:g}-minute budget" if budget else ""
    )
    return (
        f"post-trained {summary['base_model']} ({summary['objective']}) on {summary['train_rows']} rows, "
        f"{summary['steps']} steps{took}; held-out {summary['objective'].upper()} loss "
        f"{before if before is None else round(before, 4)} -> {after if after is None else round(after, 4)}; "
        f"saved to {folder}"
    )
