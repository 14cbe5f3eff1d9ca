"""Distillation of a finished K-fold run into one model that serves alone (Hinton et al. 2015, with sigmoid outputs).

    python distill.py CONFIG --teacher_run OUT --output_dir DIR [--unlabelled_files FILE ...]

The student is trained with the run's training files, cleaning, loss, techniques and Trainer settings of CONFIG
(the teacher's own `OUT/config.yaml` works, and so does a config with a smaller backbone), on soft targets:

- training rows: the teacher's out-of-fold probability (made by the fold that did not train on the row), mixed
  with the gold labels as `distill_gold_weight` x gold + (1 - distill_gold_weight) x teacher;
- unlabelled rows (`unlabelled_files`, e.g. the test text): the fold ensemble's mean probability; for the teacher's
  own test file its folds' saved test probabilities, for any other file the folds' `best/` checkpoints predict it.

The rows of the teacher's fold `validation_fold` are held out with their gold labels: they choose the student's
best epoch. Their score is optimistic and not a fair comparison with the teacher's fold model: every other fold of
the teacher learned these rows' labels, and that knowledge reaches the student through the soft targets (those
folds' probabilities on the training rows near them and on the unlabelled text). On NIKL the student scored 0.79
there against the fold model's 0.72, and 0.73 on dev like the ensemble (BENCHMARKS.md). Judge a student on rows
the teacher never trained on (a labelled `test_file`, e.g. dev, scored with score.py). Unlabelled rows must not be
training rows (the ensemble's probabilities of a training row come from folds that learned its label).

DIR holds `best/` (for `inference.py --checkpoint DIR/best`), `val_probs.jsonl`, `metrics.json`, `distill.json`
(student vs teacher), `config.yaml`, and with a `test_file` `test_probs.jsonl` and `submission.jsonl`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np
from accelerate import PartialState
from transformers import TrainingArguments

from nikl_emotion.config import (
    ARGUMENT_CLASSES, TRAINING_DEFAULTS, DataArguments, KFoldArguments, LossArguments, ModelArguments,
    TechniqueArguments, parse_arguments, resolved_config, validate,
)
from nikl_emotion.data import file_digest, iter_column, iter_inputs, load_jsonl, load_jsonl_files
from nikl_emotion.errors import PipelineError
from nikl_emotion.fileio import read_probs, write_json_atomic, write_submission
from nikl_emotion.metrics import decide, score
from nikl_emotion.ngram import is_ngram
from nikl_emotion.preprocessing import Preprocessing, clean, encode
from nikl_emotion.run_folder import (
    BACKBONE_DIR, CONFIG_FILE, INPUTS_FILE, SUBMISSION_FILE, FoldFolder, RunFolder, input_digests, prepare_output_dir,
    read_mapping,
)
from nikl_emotion.summary import fold_predictions
from nikl_emotion.training import FoldData, backbone_and_encodings, replace_labels, train_fold

DISTILL_FILE = "distill.json"
STUDENT_FILES = ("best", "best.partial", "checkpoints", "runs", "val_probs.jsonl", "test_probs.jsonl", "metrics.json",
                 "done.json", CONFIG_FILE, INPUTS_FILE, BACKBONE_DIR, SUBMISSION_FILE, DISTILL_FILE)
OPTIMISTIC_VALIDATION = ("the student's validation score is optimistic: the teacher's other folds learned these rows' "
                         "labels and the soft targets carry that to the student; score it on rows the teacher never "
                         "trained on (e.g. a labelled test_file with score.py)")


@dataclass
class DistillArguments:
    teacher_run: str = field(default="", metadata={"help": "A finished train.py run (OOF and fold test probabilities)."})
    unlabelled_files: list[str] = field(default_factory=list, metadata={"help": "jsonl files whose text the student "
                                        "learns with the fold ensemble's probabilities as targets."})
    distill_gold_weight: float = field(default=0.5, metadata={"help": "Training rows' target: this x gold labels + "
                                       "(1 - this) x the teacher's OOF probabilities (0: teacher only, 1: gold only)."})
    validation_fold: int = field(default=0, metadata={"help": "The teacher fold whose validation rows are held out to "
                                 "choose the student's best epoch."})

    def __post_init__(self):
        if not self.teacher_run:
            raise PipelineError("teacher_run: give the finished train.py run to distil (--teacher_run OUT)")
        if not 0 <= self.distill_gold_weight <= 1:
            raise PipelineError(f"distill_gold_weight: must be in [0, 1], got {self.distill_gold_weight}")
        for path in self.unlabelled_files:
            if not os.path.isfile(path):
                raise PipelineError(f"unlabelled_files: {path}: file not found")


def parse_distill_config(argv: list[str]) -> tuple:
    """`CONFIG [--key value ...]` -> (model, data, kfold, loss, technique, distill, training) arguments, validated."""
    classes = (*ARGUMENT_CLASSES[:-1], DistillArguments, ARGUMENT_CLASSES[-1])
    model_args, data_args, kfold_args, loss_args, technique_args, distill_args, training_args = parse_arguments(
        argv, classes, TRAINING_DEFAULTS)
    validate(model_args, data_args, kfold_args, loss_args, technique_args, training_args)
    if is_ngram(model_args.model_name_or_path):
        raise PipelineError(f"model_name_or_path: the student is an encoder; {model_args.model_name_or_path} has none")
    teacher = RunFolder(distill_args.teacher_run)
    if not os.path.isfile(teacher.oof) or not read_mapping(teacher.config):
        raise PipelineError(f"teacher_run: {distill_args.teacher_run} is not a finished train.py run (needs config.yaml "
                            "and oof.jsonl)")
    if os.path.realpath(distill_args.teacher_run) == os.path.realpath(training_args.output_dir):
        raise PipelineError("output_dir: must differ from teacher_run (the student's files would mix with the run's)")
    folds = int(read_mapping(teacher.config).get("num_folds", 0))
    if not 0 <= distill_args.validation_fold < folds:
        raise PipelineError(f"validation_fold: must be in [0, {folds - 1}] ({distill_args.teacher_run} has {folds} folds)")
    return model_args, data_args, kfold_args, loss_args, technique_args, distill_args, training_args


def ensemble_probabilities(teacher_run: str, path: str) -> tuple[list[str], np.ndarray]:
    """The fold ensemble's mean probabilities of a file's rows: the saved fold test probabilities when it is the
    teacher's test file (same bytes), else each fold's best/ predicting it."""
    from nikl_emotion.classifier import EmotionClassifier

    run = RunFolder(teacher_run)
    config = read_mapping(run.config)
    folds = range(int(config.get("num_folds", 0)))
    test_file = config.get("test_file")
    recorded = read_mapping(run.inputs).get(test_file) if test_file else None
    if test_file and os.path.isfile(test_file) and file_digest(path) == (recorded or file_digest(test_file)):
        parts = [read_probs(run.fold(k).test_probs) for k in folds]
        return parts[0][0], np.mean([probs for _, probs in parts], axis=0)
    rows = load_jsonl(path, "optional")
    probs = [EmotionClassifier.from_pretrained(run.fold(k).best).predict_proba(rows) for k in folds]
    return list(iter_column(rows, "id")), np.mean(probs, axis=0)


def soft_targets(oof: np.ndarray, gold: np.ndarray, gold_weight: float) -> np.ndarray:
    return (gold_weight * gold + (1 - gold_weight) * oof).astype(np.float32)


def run_distillation(model_args: ModelArguments, data_args: DataArguments, kfold_args: KFoldArguments,
                     loss_args: LossArguments, technique_args: TechniqueArguments, distill_args: DistillArguments,
                     training_args: TrainingArguments) -> dict | None:
    """Train the student (see the module docstring); returns distill.json's content on the main process."""
    start = time.time()
    state = PartialState()
    output_dir = training_args.output_dir
    preprocessing = Preprocessing.from_data_args(data_args)
    with training_args.main_process_first(desc="loading and cleaning"):
        train_rows = load_jsonl_files(data_args.train_files, "required")
        test_rows = load_jsonl(data_args.test_file, "optional") if data_args.test_file else None
    ids = list(iter_column(train_rows, "id"))
    teacher = RunFolder(distill_args.teacher_run)
    num_folds = int(read_mapping(teacher.config)["num_folds"])
    oof, fold_of_row = fold_predictions(distill_args.teacher_run, ids, num_folds,
                                        changed="distil with the teacher's own training files")
    unlabelled = [ensemble_probabilities(distill_args.teacher_run, path) for path in distill_args.unlabelled_files]
    known = set(ids)
    for path, (row_ids, _) in zip(distill_args.unlabelled_files, unlabelled):
        overlap = known.intersection(row_ids)
        if overlap:
            raise PipelineError(f"unlabelled_files: {path} holds training rows (e.g. id {sorted(overlap)[0]!r}); the "
                                "ensemble's probabilities for them come from folds that learned their labels")
    if state.is_main_process:
        config = resolved_config(model_args, data_args, kfold_args, loss_args, technique_args, distill_args, training_args)
        inputs = input_digests([*data_args.train_files, *distill_args.unlabelled_files,
                                *([data_args.test_file] if data_args.test_file else [])])
        prepare_output_dir(output_dir, config, kfold_args.overwrite, inputs=inputs, kind="a distillation",
                           is_run_file=lambda name: name in STUDENT_FILES,
                           has_results=lambda folder: os.path.isdir(os.path.join(folder, "best")))
    state.wait_for_everyone()

    gold = np.asarray(train_rows["labels"], dtype=np.float32)
    held_out = fold_of_row == distill_args.validation_fold
    targets = np.where(held_out[:, None], gold, soft_targets(oof, gold, distill_args.distill_gold_weight))
    with training_args.main_process_first(desc="cleaning"):
        cleaned = replace_labels(clean(train_rows, preprocessing), targets)
        cleaned_test = clean(test_rows, preprocessing) if test_rows is not None else None
        pool = []
        for path, (row_ids, probs) in zip(distill_args.unlabelled_files, unlabelled):
            rows = clean(load_jsonl(path, "optional"), preprocessing)
            position = {row_id: i for i, row_id in enumerate(row_ids)}
            pool.append(replace_labels(rows, probs[[position[i] for i in iter_column(rows, "id")]]))
    backbone, tokenizer, encoded, encoded_test = backbone_and_encodings(model_args, preprocessing, training_args,
                                                                        cleaned, cleaned_test)
    extra = None
    if pool:
        from datasets import concatenate_datasets

        with training_args.main_process_first(desc="tokenizing unlabelled rows"):
            extra = concatenate_datasets([encode(rows, tokenizer, preprocessing) for rows in pool])
    data = FoldData(distill_args.validation_fold, np.flatnonzero(~held_out), np.flatnonzero(held_out), encoded,
                    encoded_test, backbone, preprocessing, extra)
    folder = FoldFolder(output_dir)
    if folder.is_done(data.fold):
        print(f"{output_dir}: the student is already trained ({os.path.basename(folder.done)}); summarising")
        result = read_mapping(folder.metrics)
    else:
        result = train_fold(data, kfold_args, loss_args, training_args, technique_args, folder=folder)
    if not state.is_main_process:
        return None
    if test_rows is not None:
        _, test_probs = read_probs(folder.test_probs)
        write_submission(os.path.join(output_dir, SUBMISSION_FILE), iter_column(test_rows, "id"), iter_inputs(test_rows),
                         decide(test_probs, kfold_args.threshold, kfold_args.fallback_top_label))
    teacher_fold = read_mapping(teacher.fold(distill_args.validation_fold).metrics)
    teacher_oof = score(gold[held_out], decide(oof[held_out], kfold_args.threshold, kfold_args.fallback_top_label))
    summary = {
        "teacher_run": distill_args.teacher_run,
        "validation_fold": distill_args.validation_fold,
        "rows": {"training": int((~held_out).sum()), "unlabelled": 0 if extra is None else len(extra),
                 "validation": int(held_out.sum())},
        "distill_gold_weight": distill_args.distill_gold_weight,
        "validation_micro_f1": {"student": result["micro_f1"], "teacher_fold": teacher_fold.get("micro_f1"),
                                "teacher_oof": teacher_oof["micro_f1"]},
        "validation_note": OPTIMISTIC_VALIDATION,
        "seconds": round(time.time() - start, 1),
    }
    write_json_atomic(os.path.join(output_dir, DISTILL_FILE), summary)
    print(f"student validation micro-F1 {result['micro_f1']:.4f} on the teacher's fold {distill_args.validation_fold} "
          f"rows (teacher's fold model {teacher_fold.get('micro_f1', float('nan')):.4f}); checkpoint {folder.best}\n"
          f"note: {OPTIMISTIC_VALIDATION}")
    return summary

