"""The model a service answers with: a folder's checkpoints (a run's folds, a stack's members, one `best/` or an
export) loaded once and kept, predicting task-format records with the folder's own decision rule."""

from __future__ import annotations

import numpy as np

from nikl_emotion.backends.classifier import SharedEncodings
from nikl_emotion.decisions.voting import DecisionRule
from nikl_emotion.folders.folder_kind import folder_kind
from nikl_emotion.runs.run_classifier import RunClassifier
from nikl_emotion.text.data import records_table

__all__ = [
    "ServedModel",
]


class ServedModel:
    """Every checkpoint of `folder` in memory (loaded by `loader`), so a request costs one forward pass each."""

    def __init__(self, folder: str, loader, batch_size: int = 64):
        if folder_kind(folder) in ("run", "stack"):
            self.classifier = RunClassifier.open(folder, loader, "serve")
        else:  # one checkpoint or an export: the hard vote's rule at 0.5, as inference.py --checkpoint
            self.classifier = RunClassifier.from_checkpoints([folder], DecisionRule(), loader)
        self.models = [loader(path) for path in self.classifier.checkpoints()]
        self.source, self.batch_size = folder, batch_size

    @property
    def rule(self) -> DecisionRule:
        return self.classifier.rule

    def predict(self, records: list[dict]) -> tuple[np.ndarray, np.ndarray]:
        """(decisions, mean probabilities), each (rows, 8), of task-format records with unique ids: validated,
        cleaned and encoded in memory (no `datasets`), once for every checkpoint that reads them alike."""
        rows = SharedEncodings(records_table(records, "batch"))
        probs = [model.predict_proba(rows, batch_size=self.batch_size) for model in self.models]
        folds = self.classifier.combine(probs)
        return self.rule.apply(folds), self.rule.mean(folds)
