"""K-fold training with the Hugging Face Trainer: per fold the best checkpoint, validation and test probabilities;
then out-of-fold scores, a summary and a hard-voted submission."""

from __future__ import annotations

import contextlib
import shutil

import numpy as np
from accelerate import PartialState
from datasets import Dataset
from transformers import TrainingArguments

from nikl_emotion.backends.divergence import TrainingDiverged
from nikl_emotion.backends.fold_backend import FoldData, PreparedRun
from nikl_emotion.backends.registry import backend_for
from nikl_emotion.backends.tracking import push_run_files
from nikl_emotion.base.config import (
    ARGUMENT_CLASSES,
    DataArguments,
    KFoldArguments,
    LossArguments,
    ModelArguments,
    TechniqueArguments,
    field_defaults,
    resolved_config,
)
from nikl_emotion.base.errors import PipelineError
from nikl_emotion.base.locking import exclusive, exclusive_all
from nikl_emotion.decisions.decision import describe_choice
from nikl_emotion.decisions.metrics import format_table
from nikl_emotion.decisions.thresholds import describe_gain
from nikl_emotion.folders.folder_kind import check_output_folder, holds_nothing, mark_folder, prepare_output_dir
from nikl_emotion.folders.run_folder import DONE_FILE, FoldFolder, RunFolder, input_digests
from nikl_emotion.runs.summary import summarize
from nikl_emotion.text.data import iter_column, load_jsonl
from nikl_emotion.text.preprocessing import clean, load_task_files
from nikl_emotion.training.folds import make_folds
from nikl_emotion.training.pseudo_labels import PseudoLabels, fold_pseudo_labels, teacher_test_file


def train_fold(
    data: FoldData,
    kfold_args: KFoldArguments,
    loss_args: LossArguments,
    training_args: TrainingArguments,
    technique_args: TechniqueArguments | None = None,
    folder: FoldFolder | None = None,
) -> dict:
    """Train one fold with the backend of `data.backbone`: its checkpoint in `best/`, its validation and test
    probabilities, metrics and `done.json` (last) in `folder` (default: the run's fold_K). Every rank calls this; the
    main process writes."""
    return backend_for(data.backbone).train_fold(data, kfold_args, loss_args, training_args, technique_args, folder)


def pseudo_label_datasets(
    technique_args: TechniqueArguments,
    sets: list[PseudoLabels] | None,
    preprocessing,
    prepared: PreparedRun,
    training_args: TrainingArguments,
) -> list[Dataset] | None:
    """Per fold, the pseudo-labelled test rows of `pseudo_label_run` (`sets`: its fold K's confident predictions),
    cleaned and encoded like the training rows, labels attached; None when the key is unset."""
    if sets is None:
        return None
    run_dir = technique_args.pseudo_label_run
    with training_args.main_process_first(desc="pseudo-labelled rows"):
        pool = prepared.encode(clean(load_jsonl(teacher_test_file(run_dir), "optional"), preprocessing))
    position = {row_id: i for i, row_id in enumerate(iter_column(pool, "id"))}
    datasets = []
    for k, labelled in enumerate(sets):
        datasets.append(with_labels(pool, position, labelled))
        if training_args.process_index == 0:
            print(
                f"fold {k}: {len(labelled.ids)} pseudo-labelled rows from {run_dir} (every label's probability "
                f">= {technique_args.pseudo_label_threshold:g} or <= {1 - technique_args.pseudo_label_threshold:g})"
            )
    return datasets


def with_labels(pool: Dataset, position: dict[str, int], labelled: PseudoLabels) -> Dataset:
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


def run_training(
    model_args: ModelArguments,
    data_args: DataArguments,
    kfold_args: KFoldArguments,
    loss_args: LossArguments,
    technique_args: TechniqueArguments,
    training_args: TrainingArguments,
) -> dict | None:
    """The whole K-fold job (or one fold with `fold`); returns the summary once every fold is done."""
    state = PartialState()
    output_dir = training_args.output_dir
    check_output_folder(output_dir, "run")  # before any work: another command's folder is refused, not touched
    files = load_task_files(data_args, training_args, classifier_head=model_args.classifier_head)
    preprocessing, train_rows, cleaned, cleaned_test = (
        files.preprocessing,
        files.train,
        files.cleaned,
        files.cleaned_test,
    )
    if kfold_args.num_folds > len(train_rows):
        raise PipelineError(
            f"num_folds: {kfold_args.num_folds} folds need at least as many rows; "
            f"{', '.join(data_args.train_files)} hold {len(train_rows)}"
        )
    backend = backend_for(model_args.model_name_or_path)
    if not backend.multi_process and state.num_processes > 1:
        raise PipelineError(
            f"{model_args.model_name_or_path} fits on one process: run python train.py, not accelerate launch"
        )
    folds = make_folds(np.asarray(train_rows["labels"]), kfold_args.num_folds, training_args.seed)
    pseudo_sets = None  # checked before anything is written: a run with other folds would leak validation labels
    if technique_args.pseudo_label_run is not None:
        pseudo_sets = fold_pseudo_labels(
            technique_args.pseudo_label_run,
            list(iter_column(train_rows, "id")),
            folds,
            technique_args.pseudo_label_threshold,
        )
    selected = range(kfold_args.num_folds) if kfold_args.fold is None else [kfold_args.fold]
    run = RunFolder(output_dir)
    with contextlib.ExitStack() as held:
        if state.is_main_process:
            # this process's folds stay locked while it runs: a second copy of the run (or of the fold) is refused
            # at once, while `--fold 0` and `--fold 1` side by side share the folder
            held.enter_context(exclusive_all([(run.fold_lock(k), f"{output_dir} fold {k}") for k in selected]))
        # set-up (config, offline backbone) one process at a time; the other ranks of this job only meet barriers
        with exclusive(run.setup_lock, output_dir, wait=True) if state.is_main_process else contextlib.nullcontext():
            if state.is_main_process:
                inputs = input_digests(
                    [*data_args.train_files, *([data_args.test_file] if data_args.test_file else [])]
                )
                config = resolved_config(model_args, data_args, kfold_args, loss_args, technique_args, training_args)
                prepare_output_dir(
                    output_dir,
                    config,
                    kfold_args.overwrite,
                    inputs=inputs,
                    defaults=field_defaults(*ARGUMENT_CLASSES[:-1]),
                )
            state.wait_for_everyone()
            prepared = backend.prepare(model_args, preprocessing, training_args, cleaned, cleaned_test)
            if state.is_main_process:  # from here on the folder holds this run's results (RunFolder.has_results)
                for k in selected:
                    mark_folder(run.fold(k).root, "fold")
        pseudo = pseudo_label_datasets(technique_args, pseudo_sets, preprocessing, prepared, training_args)
        fold_data = [
            FoldData(
                k,
                *folds[k],
                prepared.encoded,
                prepared.encoded_test,
                prepared.backbone,
                preprocessing,
                pseudo[k] if pseudo else None,
                model_args,
            )
            for k in selected
        ]
        train_folds(run, fold_data, kfold_args, loss_args, training_args, technique_args)
        if not state.is_main_process:
            return None
        with exclusive(run.setup_lock, output_dir, wait=True):
            summary = summarize(output_dir, train_rows, data_args.test_file, kfold_args.num_folds, kfold_args)
        if summary is not None:  # every fold is done: the decision files join the folds' best/ on the hub
            push_run_files(training_args, [run.decision, run.thresholds, run.summary, run.config, run.report])
    print_summary(summary, kfold_args, output_dir)
    return summary


def train_folds(
    run: RunFolder,
    fold_data: list[FoldData],
    kfold_args: KFoldArguments,
    loss_args: LossArguments,
    training_args: TrainingArguments,
    technique_args: TechniqueArguments,
) -> None:
    """Train the folds that are not done yet. A fold that diverges stops the run; its folder goes (and so do the
    selected folds' empty ones), so a corrected configuration may take the folder over when no results are left."""
    for data in fold_data:
        k = data.fold
        if run.fold(k).is_done(k):
            print(f"fold {k}: already complete ({DONE_FILE}); skipped")
            continue
        try:
            train_fold(data, kfold_args, loss_args, training_args, technique_args)
        except TrainingDiverged:
            if PartialState().is_main_process:
                for other in fold_data:
                    if other.fold == k or holds_nothing(run.fold(other.fold).root):
                        shutil.rmtree(run.fold(other.fold).root, ignore_errors=True)
            raise


def print_summary(summary: dict | None, kfold_args: KFoldArguments, output_dir: str) -> None:
    if summary is None:
        print(
            f"fold {kfold_args.fold} done; "
            f"the run is summarised when all {kfold_args.num_folds} folds are in {output_dir}"
        )
        return
    table = {f"fold_{f['fold']}": f for f in summary["folds"]}
    table["oof"] = summary["oof"]
    print(format_table(table))
    print(describe_gain(summary["thresholds"]))
    print(describe_choice(summary["decision"]))
