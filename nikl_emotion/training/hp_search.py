"""Hyper-parameter search: an Optuna study over the trials its backend offers, shared by any number of workers.

`python train.py CONFIG --hp-search N [--hp_folds K ...] [--hp_storage URL --hp_study NAME] [--hp_pruner median|none]`:
N trials, each training the folds `hp_folds` (default: `--fold`, else 0) as the run trains them and scored by the
micro-F1 over their choosing rows pooled (out of fold): each fold's validation rows, or with `early_stopping_split`
the share of its training rows held out that the run's epoch is then chosen on, so that the folds' out-of-fold rows
stay unseen by the search too. After each fold but the last, the median pruner stops a trial already behind the
earlier trials at that fold. The values a trial draws and how it trains are the backend's
(`backend.search_trials()`; the encoder's: `backends/encoder_search.py`, centred on the config's own values); this
program runs the study: on one process, or on every process of `accelerate launch` (the main process draws, the
others train the same trial).

Workers: every `train.py --hp-search` given the same `hp_storage` and `hp_study` runs its own trials of one study
(one per GPU: `CUDA_VISIBLE_DEVICES=k`; on several machines, a storage they all reach: an RDB URL, or `journal:PATH`
on a shared disk). Workers on one machine share one `output_dir` (an offline backbone is built once, by the first).
The study's table `OUT/hp_search.csv` (number, state, micro-F1, seconds, worker, values) and `OUT/hp_search_best.yaml`
(the best trial's values as config keys) are written by the last worker to finish, or by `--hp_report`. A killed
worker's trial is marked failed by the next worker (`hp_study.fail_stale_trials`); a restarted one goes on with the
study. Default storage: SQLite in `OUT/hp_search.db` (an interrupted search continues where it stopped).
"""

from __future__ import annotations

import contextlib
import logging
import os

import numpy as np
import yaml
from accelerate import PartialState
from accelerate.utils import broadcast_object_list

from nikl_emotion.backends.engines import check_engine, engine_of
from nikl_emotion.backends.fold_backend import FoldData, PreparedRun, SearchTrials
from nikl_emotion.backends.registry import backend_for, offered
from nikl_emotion.base.config import TRAINING_DEFAULTS, RunSettings, SearchArguments, SearchSettings, parse_arguments
from nikl_emotion.base.errors import PipelineError
from nikl_emotion.base.fileio import write_text_atomic
from nikl_emotion.base.locking import exclusive
from nikl_emotion.base.vocabulary import CHOOSING_ROWS, choosing_rows_name
from nikl_emotion.decisions.metrics import score
from nikl_emotion.folders.folder_kind import check_output_folder, claim_folder
from nikl_emotion.folders.run_folder import RunFolder
from nikl_emotion.text.preprocessing import TaskFiles
from nikl_emotion.training.config_checks import argument_classes, validate
from nikl_emotion.training.folds import choosing_rows, make_folds
from nikl_emotion.training.hp_study import fail_stale_trials, heartbeat, open_study, write_study
from nikl_emotion.training.kfold import load_run_files

__all__ = [
    "parse_search_config",
    "run_hp_search",
]

logger = logging.getLogger(__name__)


def parse_search_config(argv: list[str]) -> SearchSettings:
    """`CONFIG [--key value ...]` with the study's keys (`SearchArguments`) -> the search's validated settings."""
    check_engine(engine_of())
    *run_classes, training_class = argument_classes()
    classes = (*run_classes, SearchArguments, training_class)
    *pipeline, search, training = parse_arguments(argv, classes, TRAINING_DEFAULTS)
    settings = SearchSettings(RunSettings(*pipeline, training), search)
    validate(settings.run)
    num_folds = settings.run.folds.num_folds
    if search.hp_folds is not None and max(search.hp_folds) >= num_folds:
        raise PipelineError(f"hp_folds: must be in [0, {num_folds - 1}] (num_folds), got {search.hp_folds}")
    return settings


def _check_search(settings: SearchSettings, n_trials: int) -> SearchTrials:
    """What a search needs, checked before any work; returns the backend's trials."""
    run = settings.run
    model_name = run.model.model_name_or_path
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise PipelineError("--hp-search needs optuna: pip install optuna") from None
    refusal = f"--hp-search: {model_name} is trained by the {{backend}} backend, which offers no search"
    trials = offered(
        backend_for(model_name), "search_trials", f"{refusal} (an encoder's searches its Trainer's settings)"
    )
    if run.techniques.pseudo_label_run is not None:
        raise PipelineError("--hp-search tunes on the folds' training rows alone; run it without pseudo_label_run")
    if n_trials < 1 and not settings.search.hp_report:
        raise PipelineError(f"--hp-search: the number of trials must be at least 1, got {n_trials}")
    return trials


def _search_folds(settings: SearchSettings) -> list[int]:
    """The folds a trial trains: `hp_folds`, else `--fold`, else 0."""
    return settings.search.hp_folds or [settings.run.folds.fold or 0]


def _scored_on(settings: SearchSettings, chosen_on: str) -> str:
    """What a trial's score is measured on, in words (hp_search_best.yaml's header)."""
    folds = _search_folds(settings)
    which = f"fold {folds[0]}" if len(folds) == 1 else f"folds {', '.join(map(str, folds))} pooled"
    return f"{which}: the {CHOOSING_ROWS[chosen_on]}"


def run_hp_search(settings: SearchSettings, n_trials: int) -> dict | None:
    """`n_trials` trials of the study (module docstring), then its table if no other worker is still running one.
    Returns what was found, on the main process."""
    trials = _check_search(settings, n_trials)
    run_settings = settings.run
    if run_settings.budget.time_budget_minutes is not None:
        logger.info("--hp-search: each trial trains num_train_epochs; time_budget_minutes sizes the run, not a trial")
    state, output_dir = PartialState(), run_settings.training.output_dir
    check_output_folder(output_dir, "run")
    chosen_on = choosing_rows_name(run_settings.stopping.early_stopping_split > 0)
    if settings.search.hp_report:
        return _report(settings, chosen_on, force=True) if state.is_main_process else None
    prepared, splits = _set_up(settings, state)
    search_run = _SearchRun(settings, trials, prepared, splits)
    if not state.is_main_process:
        search_run.follow()
        return None
    study = search_run.lead(n_trials)
    return _report(settings, chosen_on, force=False, study=study)


def _set_up(settings: SearchSettings, state: PartialState) -> tuple[PreparedRun, dict]:
    """The folder claimed and the backend's rows prepared, the workers sharing the folder one at a time (an offline
    backbone is built by the first and reused by the others: one vocabulary for every trial); each fold's split."""
    run_settings = settings.run
    output_dir = run_settings.training.output_dir
    run = RunFolder(output_dir)
    files = load_run_files(run_settings)
    lock = exclusive(run.setup_lock, output_dir, wait=True) if state.is_main_process else contextlib.nullcontext()
    with lock:
        if state.is_main_process:
            claim_folder(output_dir, "run")
            write_text_atomic(run.hp_config, yaml.safe_dump(settings.resolved(), allow_unicode=True, sort_keys=False))
        state.wait_for_everyone()
        backend = backend_for(run_settings.model.model_name_or_path)
        # an offline backbone, shared with train.py in this folder, also learns the test texts
        prepared = backend.prepare(run_settings, files.preprocessing, files.cleaned, files.cleaned_test)
    return prepared, {k: _search_split(run_settings, files, prepared, k) for k in _search_folds(settings)}


def _report(settings: SearchSettings, chosen_on: str, force: bool, study=None) -> dict:
    """The study (`study`, the one this worker ran, or opened) as it stands: its best trial, and its table written if
    no trial is running (or `force`)."""
    from optuna.trial import TrialState

    output_dir = settings.run.training.output_dir
    study = study or open_study(settings.search, output_dir, settings.run.training.seed)
    fail_stale_trials(study, settings.search.hp_heartbeat)
    written = write_study(study, output_dir, _scored_on(settings, chosen_on), force=force)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    best = max(complete, key=lambda t: t.value) if complete else None
    return {
        "best_trial": None if best is None else best.number,
        "micro_f1": None if best is None else best.value,
        "params": {} if best is None else best.params,
        "trials": len(study.get_trials(deepcopy=False)),
        "folds": _search_folds(settings),
        "chosen_on": chosen_on,
        "table": RunFolder(output_dir).hp_table if written else None,
    }


class _SearchRun:
    """One worker's trials: the main process draws each trial and every process of the launch trains it on the
    search's folds, the pruner's verdict after each fold shared by all."""

    def __init__(self, settings: SearchSettings, trials: SearchTrials, prepared: PreparedRun, splits: dict):
        self.settings, self.trials, self.prepared, self.splits = settings, trials, prepared, splits
        self.scratch = RunFolder(settings.run.training.output_dir).hp_trials

    def lead(self, n_trials: int):
        """Run `n_trials` trials of the study on every process of the launch; returns the study."""
        search, run = self.settings.search, self.settings.run
        study = open_study(search, run.training.output_dir, run.training.seed)
        fail_stale_trials(study, search.hp_heartbeat)

        def objective(trial) -> float:
            drawn = _shared({"number": trial.number, "values": self.trials.suggest(trial, run)})

            def prune(step: int, value: float) -> bool:
                trial.report(value, step)
                return bool(_shared(trial.should_prune()))

            with heartbeat(trial, search.hp_heartbeat):
                return self.score(drawn, prune)

        try:
            study.optimize(objective, n_trials=n_trials, callbacks=[lambda study, _: self._stale(study)])
        finally:
            _shared(None)  # the other processes stop (after the last trial, or a failed one)
        return study

    def _stale(self, study) -> None:
        fail_stale_trials(study, self.settings.search.hp_heartbeat)

    def follow(self) -> None:
        """A process other than the main one trains each trial the main process draws, until it says the search
        is over."""
        import optuna

        while (drawn := _shared(None)) is not None:
            with contextlib.suppress(optuna.TrialPruned):
                self.score(drawn, lambda step, value: bool(_shared(None)))

    def score(self, drawn: dict, prune) -> float:
        """The trial's micro-F1 over its folds' choosing rows pooled; after each fold but the last, `prune(step,
        score so far)` may stop it."""
        import optuna

        settings = self.settings.run.with_values(drawn["values"])
        gold, decided, value = [], [], float("nan")
        for step, (fold, data) in enumerate(self.splits.items()):
            scratch = os.path.join(self.scratch, f"trial_{drawn['number']}", f"fold_{fold}")
            result = self.trials.score(settings, self.prepared, data, scratch)
            gold.append(result.gold)
            decided.append(result.decided)
            value = score(np.concatenate(gold), np.concatenate(decided))["micro_f1"]
            if step < len(self.splits) - 1 and prune(step, value):
                raise optuna.TrialPruned(f"after fold {fold}: micro-F1 {value:.4f}")
        return value


def _shared(value):
    """The main process's `value` (a trial's values, a verdict, or None: the search is over) sent to every process
    of the launch; the others pass anything and get it."""
    if PartialState().num_processes > 1:
        value = broadcast_object_list([value])[0]
    return value


def _search_split(settings: RunSettings, files: TaskFiles, prepared: PreparedRun, fold: int) -> FoldData:
    """Fold `fold`'s split as the run trains it: its training rows and the rows its epoch will be chosen on."""
    training = settings.training
    labels = np.asarray(files.train["labels"])
    folds = make_folds(labels, settings.folds.num_folds, training.seed)
    train_index, choose_index, _ = choosing_rows(
        folds, fold, labels, settings.stopping.early_stopping_split, training.seed
    )
    return FoldData(fold, train_index, choose_index, prepared.encoded, None, prepared.backbone, files.preprocessing)
