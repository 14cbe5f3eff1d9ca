"""`FinishedRun`: the one way to open a train.py run that every command reads (inference.py --run, stacking,
distillation's teacher, pseudo-labels, report.py). One completeness check, one error message; what a finished run
offers (its config, folds, checkpoints, out-of-fold and test probabilities, decision rule, fingerprint) is read here
and nowhere else.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from nikl_emotion.base.errors import PipelineError
from nikl_emotion.base.fileio import file_digest, read_probs
from nikl_emotion.base.labels import NUM_LABELS
from nikl_emotion.folders.folder_kind import require_kind
from nikl_emotion.folders.run_folder import RunFolder, read_mapping

__all__ = [
    "FinishedRun",
    "fold_predictions",
    "OOF_UNSEEN",
    "OOF_CHOSE_EPOCH",
    "oof_exposure",
    "describe_oof_exposure",
]

# what a run's out-of-fold probabilities saw
OOF_UNSEEN = "unseen"  # no choice was made on them: a backend that chooses no epoch, or early_stopping_split
OOF_CHOSE_EPOCH = "chose_epoch"  # they chose each fold's epoch and best checkpoint: their scores are optimistic


def oof_exposure(config: dict) -> str:
    """What a run's out-of-fold rows were exposed to (`unseen`, or `chose_epoch`), from its resolved config (older
    runs: their validation rows chose the epoch)."""
    from nikl_emotion.backends.registry import backend_for

    backend = backend_for(str(config.get("model_name_or_path", "")))
    if not backend.supports_early_stopping_split or float(config.get("early_stopping_split") or 0) > 0:
        return OOF_UNSEEN
    return OOF_CHOSE_EPOCH


def describe_oof_exposure(exposure: str) -> str:
    if exposure == OOF_UNSEEN:
        return "out-of-fold rows unseen by every choice"
    return "out-of-fold rows that chose each fold's epoch (optimistic: early_stopping_split holds other rows out)"


_CHANGED_TRAINING_FILES = (
    "the training files changed since the folds were trained: use the original files, or --overwrite true"
)


@dataclass(frozen=True)
class FinishedRun:
    """A train.py run whose every fold is done (and, with `summarised`, whose end was written: decision.json,
    oof.jsonl). Open it with `FinishedRun.open`."""

    path: str
    option: str  # how the user named it (--run, --runs, teacher_run, ...): every message starts with it

    @classmethod
    def open(cls, path: str, option: str = "--run", *, summarised: bool = True, with_test: bool = False) -> FinishedRun:
        """The run at `path`, checked: a train.py run (not another command's folder), every fold done, with
        `summarised` its decision rule and OOF file, with `with_test` every fold's test probabilities."""
        require_kind(path, "run", option)
        run = cls(os.fspath(path), option)
        if not run.config:
            run.refuse(f"no {os.path.basename(run.folder.config)}")
        for k in range(run.num_folds):
            if not run.folder.fold(k).is_done(k):  # done.json is written last: files without it may be half a fold's
                run.refuse(f"fold {k} is not complete: no {os.path.relpath(run.folder.fold(k).done, path)}")
        if summarised:
            for needed in (run.folder.decision, run.folder.oof):
                if not os.path.isfile(needed):
                    run.refuse(f"no {os.path.basename(needed)}, written when every fold is done")
        if with_test:
            run.check_test_probabilities()
        return run

    def refuse(self, why: str):
        raise PipelineError(f"{self.option}: {self.path} is not a finished train.py run ({why})")

    @property
    def folder(self) -> RunFolder:
        return RunFolder(self.path)

    @cached_property
    def config(self) -> dict:
        return read_mapping(self.folder.config)

    @cached_property
    def inputs(self) -> dict:
        """{input path: sha256} when the run was trained."""
        return read_mapping(self.folder.inputs)

    @property
    def num_folds(self) -> int:
        return int(self.config.get("num_folds", 0))

    @property
    def test_file(self) -> str | None:
        return self.config.get("test_file") or None

    @property
    def checkpoints(self) -> list[str]:
        """Each fold's `best/` checkpoint folder (all present)."""
        folds = [self.folder.fold(k).best for k in range(self.num_folds)]
        missing = next((path for path in folds if not os.path.isdir(path)), None)
        if missing is not None:
            raise PipelineError(f"{self.option}: {missing}: checkpoint folder not found")
        return folds

    def rule(self):
        """The `DecisionRule` its submission.jsonl was made with, checked against the fold count."""
        from nikl_emotion.decisions.voting import DecisionRule

        rule = DecisionRule.load(self.folder.decision)
        try:
            rule.check_models(self.num_folds)
        except PipelineError as exc:
            raise PipelineError(f"{self.folder.decision}: {exc}") from None
        return rule

    def train_rows(self):
        """Its training rows (the files in its config, unchanged since the run)."""
        from nikl_emotion.text.data import load_jsonl_files

        files = self.config.get("train_files") or []
        if not files:
            self.refuse("its config names no train_files")
        for path in files:
            recorded = self.inputs.get(path)
            if recorded is not None and os.path.isfile(path) and file_digest(path) != recorded:
                raise PipelineError(f"{self.option}: {path} changed since {self.path} was trained on it")
        return load_jsonl_files(files, "required")

    def oof(self, ids: list[str], changed: str = _CHANGED_TRAINING_FILES) -> tuple[np.ndarray, np.ndarray]:
        """(out-of-fold probabilities in `ids`' order, each row's fold)."""
        return fold_predictions(self.path, ids, self.num_folds, changed)

    def check_test_probabilities(self) -> None:
        if not self.test_file:
            self.refuse("it had no test_file, so its folds have no test probabilities")
        missing = next(
            (
                self.folder.fold(k).test_probs
                for k in range(self.num_folds)
                if not os.path.isfile(self.folder.fold(k).test_probs)
            ),
            None,
        )
        if missing is not None:
            self.refuse(f"{os.path.relpath(missing, self.path)} is missing")

    def fold_test(self) -> tuple[list[str], list[np.ndarray]]:
        """(the test file's ids, each fold's test probabilities), the same rows in every fold."""
        self.check_test_probabilities()
        test_ids, probs = None, []
        for k in range(self.num_folds):
            ids_k, probs_k = read_probs(self.folder.fold(k).test_probs)
            if test_ids is not None and ids_k != test_ids:
                raise PipelineError(f"{self.folder.fold(k).test_probs}: other test rows than fold 0's")
            test_ids = ids_k
            probs.append(probs_k)
        return test_ids or [], probs

    def test_file_unchanged(self, path: str | None = None) -> bool:
        """Whether `path` (default: its test file) holds the bytes its test file had when the run predicted it."""
        test_file = self.test_file
        if not test_file or not os.path.isfile(test_file):
            return False
        target = path or test_file
        recorded = self.inputs.get(test_file)
        if recorded is None:  # a run from before inputs.json: its test file as it is now
            if target == test_file:
                return True
            recorded = file_digest(test_file)
        return file_digest(target) == recorded

    def fingerprint(self) -> dict[str, str]:
        """{file under the run: sha256} of what its results are made of: the config, the decision rule and each
        fold's done.json and probabilities. A run trained again, or one whose files were replaced, differs."""
        names = [self.folder.config, self.folder.decision]
        for k in range(self.num_folds):
            fold = self.folder.fold(k)
            names += [fold.done, fold.val_probs, fold.test_probs]
        return {os.path.relpath(path, self.path): file_digest(path) for path in names if os.path.isfile(path)}


def fold_predictions(
    output_dir: str, ids: list[str], num_folds: int, changed: str = _CHANGED_TRAINING_FILES
) -> tuple[np.ndarray, np.ndarray]:
    """(out-of-fold probabilities in `ids`' order, each row's fold), read from the folds' validation files; refuses
    folds whose rows are not exactly the training rows (`changed`: what to tell the user then)."""
    run = RunFolder(output_dir)
    position = {row_id: i for i, row_id in enumerate(ids)}
    oof = np.full((len(ids), NUM_LABELS), np.nan)
    fold_of_row = np.full(len(ids), -1)
    for k in range(num_folds):
        path = run.fold(k).val_probs
        fold_ids, probs = read_probs(path)
        unknown = next((i for i in fold_ids if i not in position), None)
        if unknown is not None:
            raise PipelineError(f"{path}: id {unknown!r} is not in the training files; {changed}")
        rows = [position[i] for i in fold_ids]
        oof[rows] = probs
        fold_of_row[rows] = k
    if np.isnan(oof).any():
        raise PipelineError(f"{output_dir}: the folds' validation rows do not cover every training row; {changed}")
    return oof, fold_of_row
