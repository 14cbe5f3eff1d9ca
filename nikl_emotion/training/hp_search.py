"""Hyper-parameter search with `Trainer.hyperparameter_search` (Optuna backend) on one fold.

`python train.py CONFIG --hp-search N [--fold K]`: N trials, each training on fold K's training split (default 0)
and scored by the best micro-F1 over its epochs on the rows that choose: fold K's validation rows, or with
`early_stopping_split` a share of its training rows held out (the same rows the run's epoch is then chosen on), so
that fold K's out-of-fold rows stay unseen by the search too. The space is centred on the config's own values, so the
same command searches sensibly around a pretrained encoder's 4e-5 or the offline backbone's 1e-3:

| key | range |
|---|---|
| learning_rate | log-uniform in [lr/10, lr*10] |
| weight_decay | uniform in [0, 0.3] |
| per_device_train_batch_size | one of 16, 32, 64, 128 |
| num_train_epochs | integer in [max(1, E/2), E] (E: the config's epochs) |
| warmup_steps | ratio in [0, 0.2] |
| label_smoothing | uniform in [0, 0.2] |
| the loss's own keys | its `Loss.suggest` (backends/losses.py): bce: pos_weight none/auto; focal: focal_gamma |
| | [0, 4], focal_alpha [0.1, 0.9]; asl: asl_gamma_neg [0, 6], asl_clip [0, 0.2]; a registered loss: its keys' ranges |

Trials go to an Optuna SQLite study in `OUT/hp_search.db` (an interrupted search continues where it stopped);
`OUT/hp_search.csv` lists every trial (number, state, micro-F1, seconds, parameters) and `OUT/hp_search_best.yaml`
holds the best trial's values as config keys for `train.py CONFIG OUT/hp_search_best.yaml`-style reuse.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import math
import os

import numpy as np
import yaml
from accelerate import PartialState
from transformers import TrainingArguments

from nikl_emotion.backends.emotion_trainer import EmotionTrainer, fold_trainer_inputs, make_loss
from nikl_emotion.backends.encoder_backend import backbone_and_encodings, backbone_loading, load_classifier
from nikl_emotion.backends.engines import check_search_engine, engine_of
from nikl_emotion.backends.losses import loss_named
from nikl_emotion.backends.registry import backend_for
from nikl_emotion.base.config import LossArguments, RunSettings
from nikl_emotion.base.errors import PipelineError
from nikl_emotion.base.fileio import write_text_atomic
from nikl_emotion.base.vocabulary import CHOOSING_ROWS, choosing_rows_name
from nikl_emotion.folders.folder_kind import check_output_folder, claim_folder
from nikl_emotion.folders.run_folder import RunFolder
from nikl_emotion.text.preprocessing import TaskFiles
from nikl_emotion.training.folds import choosing_rows, make_folds
from nikl_emotion.training.kfold import load_run_files

__all__ = [
    "run_hp_search",
]

logger = logging.getLogger(__name__)


_BATCH_SIZES = (16, 32, 64, 128)


def _loss_keys(loss_args: LossArguments) -> set[str]:
    """The settings' loss keys (the registered losses' included): a trial's values that are not TrainingArguments."""
    return {field.name for field in dataclasses.fields(loss_args)}


def _suggest(trial, base: TrainingArguments, loss_args: LossArguments) -> dict:
    """One trial's values (documented in the module docstring); Trainer keys and loss keys together."""
    lr = base.learning_rate
    epochs = max(1, int(math.ceil(base.num_train_epochs)))
    params = {
        "learning_rate": trial.suggest_float("learning_rate", lr / 10, lr * 10, log=True),
        "weight_decay": trial.suggest_float("weight_decay", 0.0, 0.3),
        "per_device_train_batch_size": trial.suggest_categorical("per_device_train_batch_size", list(_BATCH_SIZES)),
        "num_train_epochs": trial.suggest_int("num_train_epochs", max(1, epochs // 2), epochs),
        "warmup_steps": trial.suggest_float("warmup_steps", 0.0, 0.2),
        "label_smoothing": trial.suggest_float("label_smoothing", 0.0, 0.2),
    }
    return {**params, **loss_named(loss_args.loss).suggest(trial)}


class _SearchTrainer(EmotionTrainer):
    """Applies a trial's loss keys (which are not TrainingArguments) and tracks the trial's best epoch."""

    def __init__(self, *args, loss_args: LossArguments, train_labels: np.ndarray, **kwargs):
        super().__init__(*args, **kwargs)
        self.base_loss_args = loss_args
        self.train_labels = train_labels
        self.best_in_trial = -math.inf

    def _hp_search_setup(self, trial) -> None:
        super()._hp_search_setup(trial)  # sets the TrainingArguments keys
        if trial is None:
            return
        params = dict(trial.params)
        if "warmup_steps" in params:  # the Trainer casts to the old value's type: 0 (int) would swallow a ratio
            self.args.warmup_steps = float(params["warmup_steps"])
        loss_keys = _loss_keys(self.base_loss_args)
        loss_params = {k: v for k, v in params.items() if k in loss_keys}
        self.loss_fn = make_loss(dataclasses.replace(self.base_loss_args, **loss_params), self.train_labels)
        self.best_in_trial = -math.inf

    def objective_of(self, metrics: dict) -> float:
        # a trial is worth its best epoch (what load_best_model_at_end would keep), not its last
        self.best_in_trial = max(self.best_in_trial, metrics["eval_micro_f1"])
        return self.best_in_trial


def _trials_table(study) -> list[dict]:
    rows = []
    for trial in study.trials:
        duration = (trial.datetime_complete - trial.datetime_start).total_seconds() if trial.datetime_complete else None
        rows.append(
            {
                "trial": trial.number,
                "state": trial.state.name,
                "micro_f1": None if trial.value is None else round(trial.value, 6),
                "seconds": None if duration is None else round(duration, 1),
                **trial.params,
            }
        )
    return rows


def _write_trials(output_dir: str, study, rows_name: str) -> None:
    rows = _trials_table(study)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    run = RunFolder(output_dir)
    write_text_atomic(run.hp_table, buffer.getvalue())
    complete = [t for t in study.trials if t.value is not None]
    if complete:
        best = max(complete, key=lambda t: t.value)
        header = f"# hp_search trial {best.number}: micro-F1 {best.value:.4f} on the {rows_name}\n"
        write_text_atomic(run.hp_best, header + yaml.safe_dump(dict(best.params), sort_keys=False))


def _check_search(settings: RunSettings, n_trials: int):
    """What a search needs, checked before any work; returns the optuna module."""
    model_args, technique_args = settings.model, settings.techniques
    try:
        import optuna
    except ImportError:
        raise PipelineError("--hp-search needs optuna: pip install optuna") from None
    if not backend_for(model_args.model_name_or_path).supports_hp_search:
        raise PipelineError(
            f"--hp-search tunes the Trainer's settings of an encoder; {model_args.model_name_or_path} has none"
        )
    if technique_args.pseudo_label_run is not None:
        raise PipelineError("--hp-search tunes on fold 0's training split alone; run it without pseudo_label_run")
    if n_trials < 1:
        raise PipelineError(f"--hp-search: the number of trials must be at least 1, got {n_trials}")
    check_search_engine(engine_of(settings.training), settings.training.deepspeed)
    return optuna


def run_hp_search(settings: RunSettings, n_trials: int) -> dict | None:
    """`n_trials` Optuna trials on fold `fold` (default 0) of the run's folds; the table and the best trial's keys in
    the run folder (module docstring). Returns the best trial on the main process."""
    optuna = _check_search(settings, n_trials)
    if settings.kfold.time_budget_minutes is not None:
        logger.info("--hp-search: each trial trains num_train_epochs; time_budget_minutes sizes the run, not a trial")
    state, training = PartialState(), settings.training
    output_dir = training.output_dir
    check_output_folder(output_dir, "run")
    run = RunFolder(output_dir)
    files = load_run_files(settings)
    if state.is_main_process:
        claim_folder(output_dir, "run")  # the study lives in a run's folder (RunFolder.hp_*)
        write_text_atomic(run.hp_config, yaml.safe_dump(settings.resolved(), allow_unicode=True, sort_keys=False))
    state.wait_for_everyone()
    trainer, chosen_on = _search_trainer(settings, run, files)
    storage = f"sqlite:///{os.path.abspath(run.hp_study)}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    loss_keys = _loss_keys(settings.loss)
    best = trainer.hyperparameter_search(
        # the Trainer sets the TrainingArguments keys; SearchTrainer reads the loss keys from trial.params
        hp_space=lambda trial: {
            k: v for k, v in _suggest(trial, training, settings.loss).items() if k not in loss_keys
        },
        compute_objective=trainer.objective_of,
        n_trials=n_trials,
        direction="maximize",
        backend="optuna",
        storage=storage,
        study_name="hp_search",
        load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=training.seed),
    )
    if not state.is_main_process:
        return None
    study = optuna.load_study(study_name="hp_search", storage=storage)
    _write_trials(output_dir, study, CHOOSING_ROWS[chosen_on])
    return {
        "best_trial": int(best.run_id),
        "micro_f1": best.objective,
        "params": best.hyperparameters,
        "trials": len(study.trials),
        "fold": settings.kfold.fold or 0,
        "chosen_on": chosen_on,
        "table": run.hp_table,
    }


def _search_trainer(settings: RunSettings, run: RunFolder, files: TaskFiles) -> tuple[_SearchTrainer, str]:
    """The trials' Trainer on the chosen fold's split, and which rows score the trials (a `CHOOSING_ROWS` name): a
    fresh classifier per trial from the run's backbone (an offline one, shared with train.py in this folder, also
    learns the test texts)."""
    model_args, training = settings.model, settings.training
    preprocessing = files.preprocessing
    backbone, tokenizer, encoded, _ = backbone_and_encodings(
        model_args, preprocessing, training, files.cleaned, files.cleaned_test
    )
    labels, fold = np.asarray(files.train["labels"]), settings.kfold.fold or 0
    folds = make_folds(labels, settings.kfold.num_folds, training.seed)
    # the run's own split of this fold: trials are scored on the rows its epoch will be chosen on
    train_index, choose_index, held_out = choosing_rows(
        folds, fold, labels, settings.kfold.early_stopping_split, training.seed
    )
    train_split, val_split = encoded.select(train_index), encoded.select(choose_index)
    # trials are scored, not kept: no checkpoints, no best-model reload, nothing pushed to the hub
    args = dataclasses.replace(
        training,
        output_dir=run.hp_trials,
        save_strategy="no",
        load_best_model_at_end=False,
        remove_unused_columns=False,
        push_to_hub=False,
    )
    head, loading = preprocessing.classifier_head, backbone_loading(model_args)
    trainer = _SearchTrainer(
        model=None,
        model_init=lambda trial=None: load_classifier(backbone, tokenizer, settings.techniques, head, loading),
        args=args,
        **fold_trainer_inputs(train_split, val_split, tokenizer, settings),
        loss_args=settings.loss,
        train_labels=np.asarray(train_split["labels"]),
    )
    return trainer, choosing_rows_name(held_out)
