"""K-fold training with the Hugging Face Trainer: per fold the best checkpoint, validation and test probabilities;
then out-of-fold scores, a summary and a hard-voted submission."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import time
from dataclasses import dataclass

import numpy as np
from accelerate import PartialState
from datasets import Dataset

from nikl_emotion.backends.budget_clock import SAFETY
from nikl_emotion.backends.divergence import TrainingDiverged
from nikl_emotion.backends.engines import release_memory
from nikl_emotion.backends.fold_backend import FoldBackend, FoldData, PreparedRun
from nikl_emotion.backends.heads import head_named
from nikl_emotion.backends.registry import backend_for
from nikl_emotion.backends.tracking import check_hub, push_run_files
from nikl_emotion.base.config import RunSettings, field_defaults
from nikl_emotion.base.errors import PipelineError
from nikl_emotion.base.locking import exclusive, exclusive_all
from nikl_emotion.folders.folder_kind import check_output_folder, holds_nothing, mark_folder, prepare_output_dir
from nikl_emotion.folders.run_folder import DONE_FILE, RunFolder, input_digests
from nikl_emotion.runs.summary import record_how_it_ran, summarize
from nikl_emotion.text.data import iter_column, load_jsonl
from nikl_emotion.text.preprocessing import TaskFiles, clean, load_task_files
from nikl_emotion.training.config_checks import argument_classes
from nikl_emotion.training.folds import choosing_rows, make_folds
from nikl_emotion.training.pseudo_labels import PseudoLabels, fold_pseudo_labels, teacher_test_file

logger = logging.getLogger(__name__)

__all__ = [
    "load_run_files",
    "replace_labels",
    "run_training",
    "KFoldRun",
]


def load_run_files(settings: RunSettings, others: tuple[tuple[str | None, str], ...] = ()) -> TaskFiles:
    """The run's files, validated and cleaned, encoded for its classification head (`load_task_files`)."""
    head = head_named(settings.model.classifier_head)
    return load_task_files(
        settings.data, settings.training, others=others, classifier_head=head.name, head_inputs=head.inputs
    )


def _pseudo_label_datasets(
    settings: RunSettings, sets: list[PseudoLabels] | None, preprocessing, prepared: PreparedRun
) -> list[Dataset] | None:
    """Per fold, the pseudo-labelled test rows of `pseudo_label_run` (`sets`: its fold K's confident predictions),
    cleaned and encoded like the training rows, labels attached; None when the key is unset."""
    if sets is None:
        return None
    techniques, training = settings.techniques, settings.training
    run_dir = techniques.pseudo_label_run
    with training.main_process_first(desc="pseudo-labelled rows"):
        pool = prepared.encode(clean(load_jsonl(teacher_test_file(run_dir), "optional"), preprocessing))
    position = {row_id: i for i, row_id in enumerate(iter_column(pool, "id"))}
    datasets = []
    for k, labelled in enumerate(sets):
        datasets.append(_with_labels(pool, position, labelled))
        threshold = techniques.pseudo_label_threshold
        logger.info(
            "fold %d: %d pseudo-labelled rows from %s (every label's probability >= %g or <= %g)",
            k,
            len(labelled.ids),
            run_dir,
            threshold,
            1 - threshold,
        )
    return datasets


def _with_labels(pool: Dataset, position: dict[str, int], labelled: PseudoLabels) -> Dataset:
    """The rows of `pool` named by `labelled.ids`, their `labels` column set to the pseudo-labels."""
    missing = [row_id for row_id in labelled.ids if row_id not in position]
    if missing:
        raise PipelineError(f"pseudo_label_run: id {missing[0]!r} of its test predictions is not in its test file")
    return replace_labels(pool.select([position[row_id] for row_id in labelled.ids]), labelled.labels)


def replace_labels(rows: Dataset, labels: np.ndarray) -> Dataset:
    """`rows` with their `labels` column replaced (pseudo-labels, soft targets), same feature type."""
    feature = rows.features["labels"]
    return rows.remove_columns("labels").add_column(
        "labels", np.asarray(labels, dtype=np.float32).tolist(), feature=feature
    )


def run_training(settings: RunSettings) -> dict | None:
    """The whole K-fold job (or one fold with `fold`); returns the summary once every fold is done."""
    return KFoldRun.open(settings).train()


@dataclass
class KFoldRun:
    """One K-fold run: its settings, the rows it reads, its folds and the backend that trains them. `open` checks
    what can be checked before anything is written; `train` trains the folds not done yet, then summarises."""

    settings: RunSettings
    files: TaskFiles
    backend: FoldBackend
    folds: list[tuple[np.ndarray, np.ndarray]]
    pseudo_sets: list[PseudoLabels] | None
    started: float  # time.monotonic() when the run opened: time_budget_minutes counts from here

    @classmethod
    def open(cls, settings: RunSettings) -> KFoldRun:
        started = time.monotonic()
        model, folds, training = settings.model, settings.folds, settings.training
        check_output_folder(training.output_dir, "run")  # before any work: another command's folder is refused
        files = load_run_files(settings)
        if folds.num_folds > len(files.train):
            raise PipelineError(
                f"num_folds: {folds.num_folds} folds need at least as many rows; "
                f"{', '.join(settings.data.train_files)} hold {len(files.train)}"
            )
        if PartialState().is_main_process:
            check_hub(training)  # before any fold trains: a run that cannot push stops now
        backend = backend_for(model.model_name_or_path)
        if not backend.supports_multi_process and PartialState().num_processes > 1:
            raise PipelineError(
                f"{model.model_name_or_path} fits on one process: run python train.py, not accelerate launch"
            )
        folds = make_folds(np.asarray(files.train["labels"]), settings.folds.num_folds, training.seed)
        pseudo_sets = None  # checked before anything is written: a run with other folds would leak validation labels
        techniques = settings.techniques
        if techniques.pseudo_label_run is not None:
            ids = list(iter_column(files.train, "id"))
            pseudo_sets = fold_pseudo_labels(techniques.pseudo_label_run, ids, folds, techniques.pseudo_label_threshold)
        return cls(settings, files, backend, folds, pseudo_sets, started)

    @property
    def folder(self) -> RunFolder:
        return RunFolder(self.settings.training.output_dir)

    @property
    def ends_at(self) -> float | None:
        """time_budget_minutes: the time.monotonic() by which the folds' training and predicting end (a share of
        the minutes is kept back for the summary and noise, as post-training keeps it)."""
        budget = self.settings.budget.time_budget_minutes
        return None if budget is None else self.started + budget * 60 * SAFETY

    @property
    def selected(self) -> list[int]:
        folds = self.settings.folds
        return list(range(folds.num_folds)) if folds.fold is None else [folds.fold]

    def train(self) -> dict | None:
        state, run, output_dir = PartialState(), self.folder, self.settings.training.output_dir
        with contextlib.ExitStack() as held:
            if state.is_main_process:
                # this process's folds stay locked while it runs: a second copy of the run (or of the fold) is
                # refused at once, while `--fold 0` and `--fold 1` side by side share the folder
                locks = [(run.fold_lock(k), f"{output_dir} fold {k}") for k in self.selected]
                held.enter_context(exclusive_all(locks))
            prepared = self.set_up(state)
            _train_folds(self.settings, self.backend, run, self.fold_data(prepared), self.ends_at)
            if not state.is_main_process:
                return None
            summary = self.summarize()
        if summary is None:
            folds = self.settings.folds
            logger.info(
                "fold %s done; the run is summarised when all %d folds are in %s",
                folds.fold,
                folds.num_folds,
                output_dir,
            )
        return summary

    def set_up(self, state: PartialState) -> PreparedRun:
        """The folder claimed with the resolved config, then the backend's set-up (offline backbone, tokenized
        rows), one process at a time; the other ranks of this job only meet barriers."""
        settings, run = self.settings, self.folder
        output_dir, data = settings.training.output_dir, settings.data
        with exclusive(run.setup_lock, output_dir, wait=True) if state.is_main_process else contextlib.nullcontext():
            if state.is_main_process:
                inputs = input_digests([*data.train_files, *([data.test_file] if data.test_file else [])])
                defaults = field_defaults(*argument_classes()[:-1])
                prepare_output_dir(output_dir, settings.resolved(), settings.folds.overwrite, inputs, defaults)
            state.wait_for_everyone()
            files = self.files
            prepared = self.backend.prepare(settings, files.preprocessing, files.cleaned, files.cleaned_test)
            if state.is_main_process:  # from here on the folder holds this run's results (RunFolder.has_results)
                for k in self.selected:
                    mark_folder(run.fold(k).root, "fold")
        return prepared

    def fold_data(self, prepared: PreparedRun) -> list[FoldData]:
        preprocessing = self.files.preprocessing
        pseudo = _pseudo_label_datasets(self.settings, self.pseudo_sets, preprocessing, prepared)
        folds = []
        for k in self.selected:
            train_index, held_out_choosing_index = self._training_rows(k)
            folds.append(
                FoldData(
                    k,
                    train_index,
                    self.folds[k][1],
                    prepared.encoded,
                    prepared.encoded_test,
                    prepared.backbone,
                    preprocessing,
                    pseudo[k] if pseudo else None,
                    held_out_choosing_index=held_out_choosing_index,
                )
            )
        return folds

    def _training_rows(self, k: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Fold k's (rows to train on, rows held out of them to choose the epoch, or None): early_stopping_split."""
        labels, settings = np.asarray(self.files.train["labels"]), self.settings
        train_index, choose_index, held_out = choosing_rows(
            self.folds, k, labels, settings.stopping.early_stopping_split, settings.training.seed
        )
        return train_index, choose_index if held_out else None

    def summarize(self) -> dict | None:
        """The run's summary once every fold is done (None before); the decision files then join the folds'
        best/ on the hub."""
        settings, run = self.settings, self.folder
        output_dir = settings.training.output_dir
        with exclusive(run.setup_lock, output_dir, wait=True):
            num_folds = settings.folds.num_folds
            summary = summarize(output_dir, self.files.train, settings.data.test_file, num_folds, settings.decision)
        if summary is not None:
            processes = PartialState().num_processes
            summary["ran"] = record_how_it_ran(output_dir, time.monotonic() - self.started, processes)
            push_run_files(settings.training, [run.decision, run.thresholds, run.summary, run.config, run.report])
        return summary


def _train_folds(
    settings: RunSettings, backend: FoldBackend, run: RunFolder, fold_data: list[FoldData], ends_at: float | None
) -> None:
    """Train the folds that are not done yet, each given an equal share of the seconds left until `ends_at`
    (time_budget_minutes; None: no budget). A fold that diverges stops the run; its folder goes (and so do the
    selected folds' empty ones), so a corrected configuration may take the folder over when no results are left."""
    to_train = []
    for data in fold_data:
        if run.fold(data.fold).is_done(data.fold):
            logger.info("fold %d: already complete (%s); skipped", data.fold, DONE_FILE)
        else:
            to_train.append(data)
    for position, data in enumerate(to_train):
        k = data.fold
        if position:  # the last fold's objects go before this fold's share is counted
            release_memory()
        if ends_at is not None:
            data = dataclasses.replace(data, ends_at=_fold_ends_at(ends_at, len(to_train) - position, k))
        try:
            backend.train_fold(settings, data)  # saves best/, the fold's files last
        except TrainingDiverged:
            if PartialState().is_main_process:
                for other in fold_data:
                    if other.fold == k or holds_nothing(run.fold(other.fold).root):
                        shutil.rmtree(run.fold(other.fold).root, ignore_errors=True)
            raise


def _fold_ends_at(run_ends_at: float, folds_left: int, fold: int) -> float:
    """A fold's end: an equal share of the run's seconds left (a fold that ran short leaves more to the next)."""
    now = time.monotonic()
    share = max(run_ends_at - now, 0.0) / folds_left
    logger.info(
        "fold %d: %.0f s of time_budget_minutes (%.0f s left over %d folds); its schedule follows them or its "
        "epochs, whichever is further along",
        fold,
        share,
        run_ends_at - now,
        folds_left,
    )
    return now + share
