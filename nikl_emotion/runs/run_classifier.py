"""`EmotionClassifier` (what `from nikl_emotion import EmotionClassifier` gives): a checkpoint, an export, a finished
run or a stack folder behind one interface; and `RunClassifier`, a run's or a stack's folds.

    classifier = EmotionClassifier.from_pretrained("out")           # a train.py run: its folds, voted by its rule
    classifier = EmotionClassifier.from_pretrained("stack")         # an ensemble.py stack folder
    labels = classifier.predict("test.jsonl")                       # bool (rows, 8): what inference.py --run writes

Fold K's probabilities are fold K's checkpoint's (a run), or the stacker applied to fold K of every member (a stack);
the folds are then decided and voted by the saved `DecisionRule`, exactly as the folder's submission.jsonl was made.
Checkpoints are loaded one at a time, when predicting, and released after, so a run of large models fits in memory.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from nikl_emotion.backends.classifier import CheckpointClassifier, SharedEncodings
from nikl_emotion.backends.precision import LoadOptions
from nikl_emotion.backends.registry import load_checkpoint
from nikl_emotion.base.errors import PipelineError
from nikl_emotion.decisions.stacking import Stacker
from nikl_emotion.decisions.voting import DecisionRule
from nikl_emotion.folders.folder_kind import describe, folder_kind
from nikl_emotion.runs.finished_run import FinishedRun
from nikl_emotion.runs.stack_run import open_stack
from nikl_emotion.text.data import Rows

__all__ = [
    "RunClassifier",
    "EmotionClassifier",
]


# a checkpoint folder -> a model with `predict_proba(rows, batch_size=, progress=)` (an EmotionClassifier), rows
# given as `SharedEncodings`
_Loader = Callable[[str], object]


class RunClassifier:
    """Fold checkpoints (`folds[k]`: fold k's checkpoint, or each member's fold-k checkpoint for a stacker) and the
    rule that votes the folds."""

    def __init__(
        self,
        folds: list[list[str]],
        rule: DecisionRule,
        load: _Loader,
        stacker: Stacker | None = None,
        source: str | None = None,
    ):
        if not folds:
            raise PipelineError(f"{source or 'RunClassifier'}: no checkpoints to predict with")
        rule.check_models(len(folds))
        self.folds, self.rule, self.load, self.stacker, self.source = folds, rule, load, stacker, source

    @classmethod
    def from_checkpoints(cls, checkpoints: list[str], rule: DecisionRule, load: _Loader) -> RunClassifier:
        """Checkpoints given one by one (inference.py --checkpoint), combined by `rule`."""
        return cls([[path] for path in checkpoints], rule, load)

    @classmethod
    def open(cls, folder: str, load: _Loader, option: str = "--run") -> RunClassifier:
        """A finished train.py run or an ensemble.py stack folder, by its kind."""
        kind = folder_kind(folder)
        if kind == "stack":
            stack = open_stack(folder, option)
            return cls(stack.fold_checkpoints, stack.rule, load, stack.stacker, source=folder)
        if kind not in (None, "run"):
            raise PipelineError(f"{option}: {folder} holds {describe(kind)}, not a train.py run or a stack of runs")
        run = FinishedRun.open(folder, option)
        return cls([[path] for path in run.checkpoints], run.rule(), load, source=folder)

    def checkpoints(self) -> list[str]:
        """Every checkpoint, fold by fold (a stack: each member's within a fold): the order `combine` reads."""
        return [path for checkpoints in self.folds for path in checkpoints]

    def combine(self, probs: list[np.ndarray]) -> list[np.ndarray]:
        """Each fold's (rows, 8) probabilities from every checkpoint's, given in `checkpoints()` order: fold k's
        checkpoint's own, or the stacker applied to fold k of every member."""
        members = len(self.folds[0])
        parts = [probs[start : start + members] for start in range(0, len(probs), members)]
        return [self.stacker.apply(part) if self.stacker is not None else part[0] for part in parts]

    def fold_probabilities(
        self, rows: Rows | SharedEncodings, *, batch_size: int = 128, progress: bool = False
    ) -> list[np.ndarray]:
        """Each fold's (rows, 8) probabilities, in the rows' order. The rows are encoded once per tokenizer and
        preprocessing (`SharedEncodings`): once for a run's folds."""
        rows = SharedEncodings.of(rows)
        probs = []
        for path in self.checkpoints():
            model = self.load(path)
            probs.append(model.predict_proba(rows, batch_size=batch_size, progress=progress))
            del model  # one checkpoint in memory at a time
        return self.combine(probs)

    def predict_proba(self, rows: Rows, *, batch_size: int = 128, progress: bool = False) -> np.ndarray:
        """The folds' (weighted) mean probability (rows, 8)."""
        return self.rule.mean(self.fold_probabilities(rows, batch_size=batch_size, progress=progress))

    def predict(self, rows: Rows, *, batch_size: int = 128, progress: bool = False) -> np.ndarray:
        """Decisions (rows, 8): the folds decided and voted by the saved rule."""
        return self.rule.apply(self.fold_probabilities(rows, batch_size=batch_size, progress=progress))


class EmotionClassifier(CheckpointClassifier):
    """A classifier over any folder this pipeline writes: a fold's `best/` (of any backend), an export, or, giving a
    `RunClassifier` (its folds, loaded one at a time when predicting, voted by its saved rule, with the same
    `predict_proba` and `predict`), a finished train.py run or an ensemble.py stack folder."""

    @classmethod
    def from_pretrained(
        cls,
        folder,
        *,
        device=None,
        threads=None,
        dtype: str = "auto",
        load_in_4bit: bool = False,
        trust_remote_code: bool = False,
    ):
        """`dtype`: auto (each checkpoint as its run trained: its base's dtype and autocast, loading.json), fp32,
        bf16 or fp16 (autocast; a decoder's weights held in it); `load_in_4bit`: a LoRA adapter's base in 4-bit
        (bitsandbytes); `trust_remote_code`: run modelling code a checkpoint ships."""
        folder = os.fspath(folder)
        options = LoadOptions(dtype=dtype, load_in_4bit=load_in_4bit, trust_remote_code=trust_remote_code)
        if folder_kind(folder) in ("run", "stack"):
            return RunClassifier.open(
                folder,
                lambda path: load_checkpoint(path, device=device, threads=threads, options=options),
                option="from_pretrained",
            )
        loaded = load_checkpoint(folder, device=device, threads=threads, options=options)
        return cls(
            loaded.runtime,
            loaded.tokenizer,
            loaded.preprocessing,
            source=loaded.source,
            encoding_key=loaded.encoding_key,
        )
