"""Distillation of a finished K-fold run into one model that serves alone (Hinton et al. 2015, with sigmoid outputs).

    python distill.py CONFIG --teacher_run OUT --output_dir DIR [--unlabelled_files FILE ...]

The student is trained with the run's training files, cleaning, loss, techniques and Trainer settings of CONFIG
(the teacher's own `OUT/config.yaml` works, and so does a config with a smaller backbone), on soft targets:

- training rows: the teacher's out-of-fold probability (made by the fold that did not train on the row), mixed
  with the gold labels as `distill_gold_weight` x gold + (1 - distill_gold_weight) x teacher;
- unlabelled rows (`unlabelled_files`, e.g. the test text): the fold ensemble's mean probability; for the teacher's
  own test file its folds' saved test probabilities, for any other file the folds' `best/` checkpoints predict it.

Which rows choose the student's best epoch (and early stopping):

- `validation_file` (the honest choice): a labelled file the teacher never trained on, e.g. a holdout split. The
  student then learns from every training row, and distill.json scores the student beside the teacher's fold
  ensemble (mean probability) on those rows. Only the student's epoch was chosen there, so its figure leans its way
  by that one choice; score both once more on a file neither saw (a labelled `test_file`, with score.py).
- otherwise the teacher's fold `validation_fold` (default 0), held out with its gold labels. Their score is
  optimistic and not a fair comparison with the teacher's fold model: every other fold of the teacher learned these
  rows' labels, and that knowledge reaches the student through the soft targets (those folds' probabilities on the
  training rows near them and on the unlabelled text). On NIKL the student scored 0.79 there against the fold
  model's 0.72, and 0.73 on dev like the ensemble (BENCHMARKS.md). It still serves to stop training; judge the
  student on rows the teacher never trained on.

Unlabelled and validation rows must not be training rows (the ensemble's probabilities of a training row come
from folds that learned its label), and a validation row must not be an unlabelled row (the student would have
learned its text with the ensemble's probabilities as targets).

DIR holds `best/` (for `inference.py --checkpoint DIR/best`), `val_probs.jsonl`, `metrics.json`, `distill.json`
(student vs teacher), `config.yaml`, and with a `test_file` `test_probs.jsonl` and `submission.jsonl`.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
from accelerate import PartialState
from datasets import Dataset, concatenate_datasets

from nikl_emotion.backends.fold_backend import FoldBackend, FoldData
from nikl_emotion.backends.registry import backend_for, offered
from nikl_emotion.base.config import (
    TRAINING_DEFAULTS,
    DistillArguments,
    DistillSettings,
    RunSettings,
    field_defaults,
    parse_arguments,
)
from nikl_emotion.base.errors import PipelineError
from nikl_emotion.base.fileio import read_probs, write_json_atomic, write_submission
from nikl_emotion.decisions.decision import fixed_rule
from nikl_emotion.decisions.metrics import score
from nikl_emotion.folders.folder_kind import STUDENT_OWNER, check_output_folder, prepare_output_dir
from nikl_emotion.folders.run_folder import (
    DISTILL_FILE,
    SUBMISSION_FILE,
    FoldFolder,
    RunFolder,
    input_digests,
    read_mapping,
)
from nikl_emotion.runs.finished_run import FinishedRun
from nikl_emotion.text.data import iter_column, iter_inputs, load_jsonl
from nikl_emotion.text.preprocessing import Preprocessing, TaskFiles, clean
from nikl_emotion.training.config_checks import argument_classes, validate
from nikl_emotion.training.kfold import load_run_files, replace_labels

logger = logging.getLogger(__name__)

__all__ = [
    "parse_distill_config",
    "ensemble_probabilities",
    "soft_targets",
    "run_distillation",
]


_OPTIMISTIC_VALIDATION = (
    "the student's validation score is optimistic: the teacher's other folds learned these rows' "
    "labels and the soft targets carry that to the student; score it on rows the teacher never "
    "trained on (e.g. a labelled test_file with score.py)"
)
_HELD_OUT_VALIDATION = (
    "the teacher never trained on these rows; only the student's epoch was chosen on them, so its "
    "figure leans its way by that one choice"
)


def parse_distill_config(argv: list[str]) -> DistillSettings:
    """`CONFIG [--key value ...]` -> the student's run settings and the distillation keys, validated."""
    *run_classes, training_class = argument_classes()
    classes = (*run_classes, DistillArguments, training_class)
    *pipeline, distill_args, training_args = parse_arguments(argv, classes, TRAINING_DEFAULTS)
    settings = DistillSettings(RunSettings(*pipeline, training_args), distill_args)
    validate(settings.run)
    model_name = settings.run.model.model_name_or_path
    _student_backend(model_name)
    settings = _without_fold_keys(settings)
    teacher = FinishedRun.open(distill_args.teacher_run, "teacher_run")
    if os.path.realpath(distill_args.teacher_run) == os.path.realpath(training_args.output_dir):
        raise PipelineError("output_dir: must differ from teacher_run (the student's files would mix with the run's)")
    check_output_folder(training_args.output_dir, "distillation")
    folds = teacher.num_folds
    if distill_args.validation_fold is not None and not 0 <= distill_args.validation_fold < folds:
        raise PipelineError(
            f"validation_fold: must be in [0, {folds - 1}] ({distill_args.teacher_run} has {folds} folds)"
        )
    return settings


# The fold loop's keys that one student has no use for, and why: a config shared with train.py (the recipe's) may set
# them; they go back to their defaults (off), and the student's config.yaml then records what it ran.
_FOLD_ONLY_KEYS = {
    "time_budget_minutes": "it shares train.py's minutes over its folds; the student trains num_train_epochs",
    "early_stopping_split": "the student's epoch is chosen on validation_file or the teacher's validation_fold",
}


def _student_backend(model_name_or_path: str) -> FoldBackend:
    """The backend that trains the student `model_name_or_path` (`FoldBackend.student`); refused where none can."""
    why = "the student is an encoder: it learns the teacher's probabilities"
    refusal = (
        f"model_name_or_path: {model_name_or_path} is trained by the {{backend}} backend, which cannot be a student"
    )
    return offered(backend_for(model_name_or_path), "student", f"{refusal} ({why})")


def _without_fold_keys(settings: DistillSettings) -> DistillSettings:
    """The settings with the fold loop's keys at their defaults, each that was set otherwise noted in the log."""
    run = settings.run
    defaults = field_defaults(type(run.stopping), type(run.budget))
    current = {**asdict(run.stopping), **asdict(run.budget)}
    changes = {key: defaults[key] for key in _FOLD_ONLY_KEYS if current[key] != defaults[key]}
    for key in changes:
        logger.info("distill.py: %s ignored: %s", key, _FOLD_ONLY_KEYS[key])
    run = run.with_values(changes)
    return replace(settings, run=run)


def ensemble_probabilities(teacher_run: str, path: str) -> tuple[list[str], np.ndarray]:
    """The fold ensemble's mean probabilities of a file's rows: the saved fold test probabilities when it is the
    teacher's test file (same bytes), else each fold's best/ predicting it."""
    from nikl_emotion.backends.registry import load_checkpoint

    run = FinishedRun.open(teacher_run, "teacher_run")
    if run.test_file_unchanged(path):
        ids, fold_test = run.fold_test()
        return ids, np.mean(fold_test, axis=0)
    rows = load_jsonl(path, "optional")
    probs = [load_checkpoint(best).predict_proba(rows) for best in run.checkpoints]
    return list(iter_column(rows, "id")), np.mean(probs, axis=0)


def soft_targets(oof: np.ndarray, gold: np.ndarray, gold_weight: float) -> np.ndarray:
    return (gold_weight * gold + (1 - gold_weight) * oof).astype(np.float32)


@dataclass
class _TeacherTargets:
    """What the teacher gives the student: its OOF probabilities of the training rows, the fold whose rows are held
    out (`held_out`, with gold labels; none with a validation file), the validation file's rows, and per unlabelled
    file its rows' ids and the fold ensemble's probabilities."""

    fold: int
    held_out: np.ndarray
    oof: np.ndarray
    validation_rows: Dataset | None
    unlabelled: list[tuple[list[str], np.ndarray]]


def run_distillation(settings: DistillSettings) -> dict | None:
    """Train the student (see the module docstring); returns distill.json's content on the main process."""
    start = time.time()
    state, distill_args, run = PartialState(), settings.distill, settings.run
    output_dir = run.training.output_dir
    files = load_run_files(run, others=((distill_args.validation_file or None, "required"),))
    teacher = _teacher_targets(distill_args, files)
    if state.is_main_process:
        _claim_student_folder(settings)
    state.wait_for_everyone()
    data = _student_fold_data(settings, files, teacher)
    folder = FoldFolder(output_dir)
    if folder.is_done(data.fold):
        logger.info("%s: the student is already trained (%s); summarising", output_dir, os.path.basename(folder.done))
        result = read_mapping(folder.metrics)
    else:
        result = _student_backend(run.model.model_name_or_path).train_fold(run, data, folder)
    if not state.is_main_process:
        return None
    if files.test is not None:
        _, test_probs = read_probs(folder.test_probs)
        decisions = fixed_rule(run.decision).decide(test_probs)
        submission = os.path.join(output_dir, SUBMISSION_FILE)
        write_submission(submission, iter_column(files.test, "id"), iter_inputs(files.test), decisions)
    gold = np.asarray(files.train["labels"], dtype=np.float32)
    summary, where = _distill_summary(settings, result, data, teacher, gold)
    summary["seconds"] = round(time.time() - start, 1)
    summary["validated_on"] = where
    write_json_atomic(os.path.join(output_dir, DISTILL_FILE), summary)
    return summary


def _teacher_targets(distill_args: DistillArguments, files: TaskFiles) -> _TeacherTargets:
    """The teacher's probabilities for the student's rows, refused where they would leak labels."""
    (validation_rows,) = files.others
    ids = list(iter_column(files.train, "id"))
    teacher = FinishedRun.open(distill_args.teacher_run, "teacher_run")
    oof, fold_of_row = teacher.oof(ids, changed="distil with the teacher's own training files")
    unlabelled = [ensemble_probabilities(distill_args.teacher_run, path) for path in distill_args.unlabelled_files]
    _refuse_leaks(distill_args, ids, validation_rows, unlabelled)
    # without a validation file the teacher's fold is held out with gold labels; with one, every row trains
    fold = 0 if distill_args.validation_fold is None else distill_args.validation_fold
    held_out = fold_of_row == fold if validation_rows is None else np.zeros(len(ids), dtype=bool)
    return _TeacherTargets(fold, held_out, oof, validation_rows, unlabelled)


def _refuse_leaks(distill_args: DistillArguments, ids: list[str], validation_rows, unlabelled: list) -> None:
    """Unlabelled and validation rows must not be training rows, nor validation rows unlabelled ones (module
    docstring)."""
    leak = "the ensemble's probabilities for them come from folds that learned their labels"
    for path, (row_ids, _) in zip(distill_args.unlabelled_files, unlabelled):
        _refuse_overlap("unlabelled_files", path, row_ids, ids, "training rows", leak)
    if validation_rows is None:
        return
    validation_ids = list(iter_column(validation_rows, "id"))
    _refuse_overlap("validation_file", distill_args.validation_file, validation_ids, ids, "training rows", leak)
    for path, (row_ids, _) in zip(distill_args.unlabelled_files, unlabelled):
        _refuse_overlap(
            "validation_file",
            distill_args.validation_file,
            validation_ids,
            row_ids,
            f"rows of the unlabelled file {path}",
            "the student would learn their text with the ensemble's probabilities as targets",
        )


def _claim_student_folder(settings: DistillSettings) -> None:
    """The student's output folder, claimed with its resolved configuration and input digests (main process)."""
    data_args, distill_args = settings.run.data, settings.distill
    inputs = input_digests(
        [
            *data_args.train_files,
            *distill_args.unlabelled_files,
            *([distill_args.validation_file] if distill_args.validation_file else []),
            *([data_args.test_file] if data_args.test_file else []),
        ]
    )
    prepare_output_dir(
        settings.run.training.output_dir,
        settings.resolved(),
        settings.run.folds.overwrite,
        inputs,
        field_defaults(*argument_classes()[:-1], DistillArguments),
        STUDENT_OWNER,
    )


def _student_fold_data(settings: DistillSettings, files: TaskFiles, teacher: _TeacherTargets) -> FoldData:
    """The student's one fold: training rows (cleaned by `load_task_files`) with soft targets (gold where held out),
    the unlabelled rows with the ensemble's probabilities as extra training rows, the validation rows (held-out fold
    or validation file)."""
    model_args, training_args = settings.run.model, settings.run.training
    gold = np.asarray(files.cleaned["labels"], dtype=np.float32)
    soft = soft_targets(teacher.oof, gold, settings.distill.distill_gold_weight)
    cleaned = replace_labels(files.cleaned, np.where(teacher.held_out[:, None], gold, soft))
    cleaned_validation, pool = _student_text_rows(settings, files.preprocessing, teacher)
    other_texts = [text for rows in [*pool, *filter(None, [cleaned_validation])] for text in rows["text"]]
    prepared = _student_backend(model_args.model_name_or_path).prepare(
        settings.run, files.preprocessing, cleaned, files.cleaned_test, other_texts
    )
    encoded, encoded_rows = prepared.encoded, prepared.encode

    extra = None
    if pool:
        with training_args.main_process_first(desc="tokenizing unlabelled rows"):
            extra = concatenate_datasets([encoded_rows(rows) for rows in pool])
    validation_index = np.flatnonzero(teacher.held_out)
    if cleaned_validation is not None:
        with training_args.main_process_first(desc="tokenizing validation rows"):
            encoded_validation = encoded_rows(cleaned_validation).cast(encoded.features)
        validation_index = np.arange(len(encoded), len(encoded) + len(encoded_validation))
        encoded = concatenate_datasets([encoded, encoded_validation])
    train_index = np.flatnonzero(~teacher.held_out)
    return FoldData(
        teacher.fold,
        train_index,
        validation_index,
        encoded,
        prepared.encoded_test,
        prepared.backbone,
        files.preprocessing,
        extra,
    )


def _student_text_rows(
    settings: DistillSettings, preprocessing: Preprocessing, teacher: _TeacherTargets
) -> tuple[Dataset | None, list[Dataset]]:
    """The validation rows and each unlabelled file's rows, cleaned; the unlabelled ones labelled with the
    ensemble's probabilities."""
    with settings.run.training.main_process_first(desc="cleaning"):
        validation = teacher.validation_rows
        cleaned_validation = clean(validation, preprocessing) if validation is not None else None
        pool = []
        for path, (row_ids, probs) in zip(settings.distill.unlabelled_files, teacher.unlabelled):
            rows = clean(load_jsonl(path, "optional"), preprocessing)
            position = {row_id: i for i, row_id in enumerate(row_ids)}
            pool.append(replace_labels(rows, probs[[position[i] for i in iter_column(rows, "id")]]))
    return cleaned_validation, pool


def _distill_summary(
    settings: DistillSettings, result: dict, data: FoldData, teacher: _TeacherTargets, gold: np.ndarray
) -> tuple[dict, str]:
    """(distill.json's content but its seconds, where the student was validated): the student beside the teacher on
    the same rows."""
    distill_args, decision_args = settings.distill, settings.run.decision
    held_out, oof, validation_rows = teacher.held_out, teacher.oof, teacher.validation_rows

    def micro_f1(gold_labels: np.ndarray, probs: np.ndarray) -> float:
        return score(gold_labels, fixed_rule(decision_args).decide(probs))["micro_f1"]

    if validation_rows is None:
        teacher_fold = read_mapping(RunFolder(distill_args.teacher_run).fold(data.fold).metrics).get(
            "micro_f1", float("nan")
        )
        teacher_scores = {"teacher_fold": teacher_fold, "teacher_oof": micro_f1(gold[held_out], oof[held_out])}
        where, note = (
            f"the teacher's fold {data.fold} rows (teacher's fold model {teacher_fold:.4f})",
            _OPTIMISTIC_VALIDATION,
        )
    else:
        _, teacher_probs = ensemble_probabilities(distill_args.teacher_run, distill_args.validation_file)
        teacher_scores = {"teacher_ensemble": micro_f1(np.asarray(validation_rows["labels"]), teacher_probs)}
        where = (
            f"{distill_args.validation_file} (the teacher's fold ensemble "
            f"{teacher_scores['teacher_ensemble']:.4f}, mean probability at {decision_args.threshold})"
        )
        note = _HELD_OUT_VALIDATION
    extra = data.extra_train_rows
    summary = {
        "teacher_run": distill_args.teacher_run,
        "validation_file": distill_args.validation_file or None,
        "validation_fold": None if validation_rows is not None else data.fold,
        "rows": {
            "training": int((~held_out).sum()),
            "unlabelled": 0 if extra is None else len(extra),
            "validation": int(len(data.val_index)),
        },
        "distill_gold_weight": distill_args.distill_gold_weight,
        "epochs_run": result.get("epochs_run"),
        "best_checkpoint": result.get("best_checkpoint"),
        "validation_micro_f1": {"student": result["micro_f1"], **teacher_scores},
        "validation_note": note,
    }
    return summary, where


def _refuse_overlap(field_name: str, path: str, row_ids: list[str], other_ids, what: str, why: str) -> None:
    overlap = set(row_ids).intersection(other_ids)
    if overlap:
        raise PipelineError(f"{field_name}: {path} holds {what} (e.g. id {sorted(overlap)[0]!r}); {why}")
