"""Hyper-parameter search: an Optuna study (TPE) over the trials its backend offers, on one fold.

`python train.py CONFIG --hp-search N [--fold K]`: N trials, each training on fold K's training split (default 0)
and scored by the best micro-F1 over its epochs on the rows that choose: fold K's validation rows, or with
`early_stopping_split` a share of its training rows held out (the same rows the run's epoch is then chosen on), so
that fold K's out-of-fold rows stay unseen by the search too. The space is centred on the config's own values, so the
same command searches sensibly around a pretrained encoder's 4e-5 or the offline backbone's 1e-3. The values a trial
draws and how a trial trains are the backend's (`backend.search_trials()`; the encoder's: `backends/encoder_search.py`,
the learning rate, weight decay, batch size, epochs, warm-up, label smoothing and the loss's own keys); this program
runs the study, on one process or on every process of `accelerate launch` (the main process draws, the others train
the same trial).

Trials go to an Optuna SQLite study in `OUT/hp_search.db` (an interrupted search continues where it stopped);
`OUT/hp_search.csv` lists every trial (number, state, micro-F1, seconds, parameters) and `OUT/hp_search_best.yaml`
holds the best trial's values as config keys for `train.py CONFIG OUT/hp_search_best.yaml`-style reuse.
"""

from __future__ import annotations

import csv
import io
import logging
import os

import numpy as np
import yaml
from accelerate import PartialState
from accelerate.utils import broadcast_object_list

from nikl_emotion.backends.fold_backend import FoldData, PreparedRun
from nikl_emotion.backends.registry import backend_for
from nikl_emotion.base.config import RunSettings
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


def _check_search(settings: RunSettings, n_trials: int) -> tuple:
    """What a search needs, checked before any work; returns (the optuna module, the backend's trials)."""
    model_args, technique_args = settings.model, settings.techniques
    try:
        import optuna
    except ImportError:
        raise PipelineError("--hp-search needs optuna: pip install optuna") from None
    backend = backend_for(model_args.model_name_or_path)
    trials = backend.search_trials()
    if trials is None:
        raise PipelineError(
            f"--hp-search: {model_args.model_name_or_path} is trained by the {backend.name} backend, which offers "
            "no search (an encoder's searches its Trainer's settings)"
        )
    if technique_args.pseudo_label_run is not None:
        raise PipelineError("--hp-search tunes on fold 0's training split alone; run it without pseudo_label_run")
    if n_trials < 1:
        raise PipelineError(f"--hp-search: the number of trials must be at least 1, got {n_trials}")
    return optuna, trials


def run_hp_search(settings: RunSettings, n_trials: int) -> dict | None:
    """`n_trials` Optuna trials on fold `fold` (default 0) of the run's folds; the table and the best trial's keys in
    the run folder (module docstring). Returns the best trial on the main process."""
    optuna, trials = _check_search(settings, n_trials)
    if settings.budget.time_budget_minutes is not None:
        logger.info("--hp-search: each trial trains num_train_epochs; time_budget_minutes sizes the run, not a trial")
    state, output_dir = PartialState(), settings.training.output_dir
    check_output_folder(output_dir, "run")
    run = RunFolder(output_dir)
    files = load_run_files(settings)
    if state.is_main_process:
        claim_folder(output_dir, "run")  # the study lives in a run's folder (RunFolder.hp_*)
        write_text_atomic(run.hp_config, yaml.safe_dump(settings.resolved(), allow_unicode=True, sort_keys=False))
    state.wait_for_everyone()
    backend = backend_for(settings.model.model_name_or_path)
    # an offline backbone, shared with train.py in this folder, also learns the test texts
    prepared = backend.prepare(settings, files.preprocessing, files.cleaned, files.cleaned_test)
    data, chosen_on = _search_split(settings, files, prepared)

    def score(values: dict) -> float:
        return trials.score(settings.with_values(values), prepared, data, run.hp_trials)

    if not state.is_main_process:
        _follow_the_main_process(score)
        return None
    storage = f"sqlite:///{os.path.abspath(run.hp_study)}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name="hp_search",
        storage=storage,
        sampler=optuna.samplers.TPESampler(seed=settings.training.seed),
        direction="maximize",
        load_if_exists=True,  # an interrupted search continues
    )
    try:
        study.optimize(lambda trial: score(_shared(trials.suggest(trial, settings))), n_trials=n_trials)
    finally:
        _shared(None)  # the other processes stop (after the last trial, or a failed one)
    _write_trials(output_dir, study, CHOOSING_ROWS[chosen_on])
    best = study.best_trial
    return {
        "best_trial": best.number,
        "micro_f1": best.value,
        "params": best.params,
        "trials": len(study.trials),
        "fold": settings.folds.fold or 0,
        "chosen_on": chosen_on,
        "table": run.hp_table,
    }


def _shared(values: dict | None) -> dict | None:
    """The main process's trial values (None: the search is over) sent to every process of the launch."""
    if PartialState().num_processes > 1:
        values = broadcast_object_list([values])[0]
    return values


def _follow_the_main_process(score) -> None:
    """A process other than the main one trains each trial the main process draws, until it says the search is
    over."""
    while (values := _shared(None)) is not None:
        score(values)


def _search_split(settings: RunSettings, files: TaskFiles, prepared: PreparedRun) -> tuple[FoldData, str]:
    """The chosen fold's split (default fold 0) as the run trains it, and which rows score the trials (a
    `CHOOSING_ROWS` name): the rows its epoch will be chosen on."""
    training = settings.training
    labels, fold = np.asarray(files.train["labels"]), settings.folds.fold or 0
    folds = make_folds(labels, settings.folds.num_folds, training.seed)
    train_index, choose_index, held_out = choosing_rows(
        folds, fold, labels, settings.stopping.early_stopping_split, training.seed
    )
    data = FoldData(fold, train_index, choose_index, prepared.encoded, None, prepared.backbone, files.preprocessing)
    return data, choosing_rows_name(held_out)
