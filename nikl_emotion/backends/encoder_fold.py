"""One fold of the encoder backend's fine-tuning (and the decoder's, which subclasses it): the fold's
`EmotionTrainer`, its clock under a time budget, resuming an interrupted fold, the divergence guard, and the fold's
record. Kept out of `encoder_backend` so that loading a checkpoint to predict does not import the Trainer's modules
(peft and bitsandbytes among them: seconds of every predicting process's start, BENCHMARKS.md issue 47). `backend`
is the `EncoderBackend` (or a subclass) whose hooks build, save and record the fold's model."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import shutil

import numpy as np
from transformers import set_seed

from nikl_emotion.backends.averaging import WeightAveraging
from nikl_emotion.backends.backbone import backbone_loading, load_tokenizer
from nikl_emotion.backends.budget_clock import FoldClock, carried_out, slowest
from nikl_emotion.backends.divergence import DivergenceGuard, TrainingDiverged, check_finite_probabilities, likely_cause
from nikl_emotion.backends.emotion_trainer import EmotionTrainer, fold_trainer_inputs, predict_in_order
from nikl_emotion.backends.engines import (
    free_engine,
    gathered_state_dict,
    open_waiting_group,
    wait_for_the_main_process,
)
from nikl_emotion.backends.fold_backend import FoldBackend, FoldData, pseudo_label_rows, write_fold_outputs
from nikl_emotion.backends.tracking import end_fold_tracking, fold_trainer_settings, push_fold
from nikl_emotion.backends.trainer_parts import keep_tensorboard_logs
from nikl_emotion.base.checkpoint_files import AVERAGING_STATE_FILE
from nikl_emotion.base.config import RunSettings
from nikl_emotion.base.vocabulary import choosing_rows_name
from nikl_emotion.decisions.decision import fixed_rule
from nikl_emotion.decisions.metrics import score
from nikl_emotion.folders.run_folder import FoldFolder, RunFolder, last_complete_checkpoint

logger = logging.getLogger(__name__)

__all__ = ["fine_tune_fold", "new_fold_trainer"]


def fine_tune_fold(backend: FoldBackend, settings: RunSettings, data: FoldData, folder: FoldFolder | None) -> dict:
    """Train one fold (resuming an interrupted one), predict its validation and test rows in order, and write
    its files, `done.json` last, into `folder` (default: the run's fold_K). Every rank calls this; the main
    process writes. The model is built and saved by `new_model` / `save_model` (a subclass's, the decoder's)."""
    training = settings.training
    folder = folder or RunFolder(training.output_dir).fold(data.fold)
    set_seed(training.seed)
    techniques = settings.techniques
    cause = likely_cause(training.learning_rate, techniques.adversarial, techniques.adversarial_epsilon)
    trainer = backend.fold_trainer(settings, data, folder)
    val_rows = data.val_rows  # `select`ed once: predicted, scored and written
    guard = DivergenceGuard(data.fold, cause)
    trainer.add_callback(guard)
    try:
        _train_resuming(trainer, folder, data.fold)
        guard.raise_if_diverged()
        val_probs = predict_in_order(trainer, data.preprocessing, val_rows)  # every rank predicts its share
        test_probs = (
            predict_in_order(trainer, data.preprocessing, data.encoded_test) if data.encoded_test is not None else None
        )
        check_finite_probabilities(data.fold, trainer.state.global_step, cause, validation=val_probs, test=test_probs)
    except TrainingDiverged:
        if trainer.is_world_process_zero():  # nothing of a diverged fold is worth resuming from
            shutil.rmtree(folder.checkpoints, ignore_errors=True)
        raise
    weights = gathered_state_dict(trainer)  # every rank: an engine that splits the weights gathers them
    result: dict = {}
    if trainer.is_world_process_zero():
        result = score(np.asarray(val_rows["labels"]), fixed_rule(settings.decision).decide(val_probs))
        backend.save_best(settings, trainer, data, folder, result, weights)
        result.update(_fold_state(trainer, data))
        push_fold(training, folder.best, data.fold)  # before done.json: a fold is done once it is pushed
        write_fold_outputs(folder, val_rows, val_probs, data.encoded_test, test_probs, result)
    end_fold_tracking()
    wait_for_the_main_process(trainer.accelerator)  # it saved best/ and pushed it alone
    free_engine(trainer)  # the fold loop collects the rest before the next fold (engines.release_memory)
    return result


def new_fold_trainer(backend: FoldBackend, settings: RunSettings, data: FoldData, folder: FoldFolder) -> EmotionTrainer:
    """The fold's EmotionTrainer: a fresh classifier from the backbone, checkpoints in the fold's folder."""
    training = settings.training
    with_markers = data.preprocessing.input_format == "marker"
    tokenizer = load_tokenizer(data.backbone, with_markers=with_markers, loading=backbone_loading(settings.model))
    model = backend.new_model(data.backbone, tokenizer, settings, data.preprocessing.classifier_head)
    fold_args = dataclasses.replace(
        training,
        output_dir=folder.checkpoints,
        remove_unused_columns=False,
        **fold_trainer_settings(training, data.fold),
    )
    inputs = fold_trainer_inputs(data.train_rows, data.choosing_rows, tokenizer, settings)
    trainer = EmotionTrainer(model=model, args=fold_args, **inputs)
    keep_tensorboard_logs(trainer, folder.runs)
    if data.ends_at is not None:
        _follow_the_fold_clock(trainer, data, len(inputs["eval_dataset"]))
    return trainer


def _train_resuming(trainer: EmotionTrainer, folder: FoldFolder, fold: int) -> None:
    """Train, resuming from the last fully written checkpoint of an interrupted fold (a half-written one is
    pruned first, by the main process)."""
    # a run with weight averaging needs the raw weights too, written after the Trainer's files
    required = (
        (AVERAGING_STATE_FILE,)
        if any(isinstance(c, WeightAveraging) for c in trainer.callback_handler.callbacks)
        else ()
    )
    if trainer.is_world_process_zero():
        last_complete_checkpoint(folder.checkpoints, required)
    trainer.accelerator.wait_for_everyone()
    open_waiting_group(trainer.accelerator)  # every process is here: the fold's end waits on it
    resume = last_complete_checkpoint(folder.checkpoints, required)
    if resume:
        logger.info("fold %d: resuming from %s", fold, os.path.basename(resume))
    trainer.train(resume_from_checkpoint=resume)


def _follow_the_fold_clock(trainer: EmotionTrainer, data: FoldData, evaluated_rows: int) -> None:
    """time_budget_minutes: the fold's schedule follows a `FoldClock` ending at `data.ends_at`, its reserve the
    rows predicted after training (validation and test) per row an evaluation scores."""
    predicted = len(data.val_index) + (len(data.encoded_test) if data.encoded_test is not None else 0)
    clock = FoldClock(data.ends_at, predicted / max(evaluated_rows, 1), functools.partial(slowest, trainer.accelerator))
    trainer.budget_clock = clock
    trainer.add_callback(clock)


def _time_budget_record(trainer: EmotionTrainer) -> dict | None:
    """What the fold's clock did (None without time_budget_minutes): steps, seconds, progress, what ended it."""
    clock = trainer.budget_clock
    if not isinstance(clock, FoldClock):
        return None
    return {**carried_out(clock, trainer.state), "ended_by": clock.ended_by(trainer.state)}


def _fold_state(trainer: EmotionTrainer, data: FoldData) -> dict:
    best = trainer.state.best_model_checkpoint
    return {
        "fold": data.fold,
        "best_checkpoint": best and os.path.basename(best),
        "best_metric": trainer.state.best_metric,
        "epochs_run": trainer.state.epoch,
        "train_rows": int(len(data.train_index)),
        "pseudo_label_rows": pseudo_label_rows(data),
        # which rows chose the epoch: the validation rows (its scores above are then optimistic) or held-out ones
        "epoch_chosen_on": choosing_rows_name(held_out=data.held_out_choosing_index is not None),
        "choosing_rows": len(data.choosing_rows),
        "time_budget": _time_budget_record(trainer),
        # how it trained: the processes (each with per_device_train_batch_size rows a step) and the engine
        "processes": trainer.accelerator.num_processes,
        "distributed_type": str(trainer.accelerator.distributed_type.value),
        # the main process's resident memory once the fold has trained and predicted: equal fold after fold when
        # nothing of the earlier folds' engines is kept
        "process_rss_mb": _resident_megabytes(),
    }


def _resident_megabytes() -> float | None:
    """This process's resident set size in MB (None where /proc is not there)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as handle:
            pages = int(handle.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
