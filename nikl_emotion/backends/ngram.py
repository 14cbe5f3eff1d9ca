"""The classical member: character n-gram TF-IDF + one logistic regression per label (scikit-learn).

`model_name_or_path: ngram:tfidf` trains it through the same fold loop as an encoder (same folds, same cleaning,
same fold files, OOF, thresholds, decision rule, report and submission), in about two minutes on NIKL on 2 CPU
cores (BENCHMARKS.md). It
is target-aware the simple way: the target's own character n-grams are a second feature block beside the text's.
Its `best/` folder holds `ngram.joblib` and `ngram.json` (what it is, the labels) with `preprocessing.json`;
`EmotionClassifier.from_pretrained` loads it like any checkpoint. A joblib file is a pickle: load only folders you
trust, as with any checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import time

import numpy as np
from datasets import Dataset

from nikl_emotion.backends.classifier import CheckpointClassifier
from nikl_emotion.backends.fold_backend import (
    FoldBackend,
    FoldData,
    PreparedRun,
    pseudo_label_rows,
    replace_best,
    write_fold_outputs,
)
from nikl_emotion.base.checkpoint_files import NGRAM_INFO_FILE, NGRAM_MODEL_FILE
from nikl_emotion.base.config import RunSettings
from nikl_emotion.base.errors import PipelineError
from nikl_emotion.base.fileio import write_json_atomic
from nikl_emotion.base.labels import LABELS, NUM_LABELS
from nikl_emotion.base.vocabulary import NGRAM_FEATURES, NGRAM_PREFIX, is_ngram
from nikl_emotion.decisions.decision import fixed_rule
from nikl_emotion.decisions.logistic import fit_label, label_probability
from nikl_emotion.decisions.metrics import score
from nikl_emotion.folders.run_folder import FoldFolder, RunFolder
from nikl_emotion.text.data import RowTable, arrow_column
from nikl_emotion.text.preprocessing import Preprocessing

logger = logging.getLogger(__name__)

__all__ = [
    "check_ngram_spec",
    "is_ngram_folder",
    "NgramClassifier",
    "NgramRuntime",
    "train_ngram",
    "train_ngram_fold",
    "NgramBackend",
]


def check_ngram_spec(model_name_or_path: str) -> None:
    features = model_name_or_path[len(NGRAM_PREFIX) :]
    if features not in NGRAM_FEATURES:
        raise PipelineError(
            f"model_name_or_path: unknown n-gram model {model_name_or_path!r}; choose one of "
            f"{', '.join(NGRAM_PREFIX + k for k in NGRAM_FEATURES)}"
        )


def is_ngram_folder(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, NGRAM_MODEL_FILE))


_CONTEXT_CHARS = 16  # the characters each side of the target that ngram:context's window blocks read


def _tfidf(analyzer: str, ngram_range: tuple[int, int], min_df: int = 1, max_features: int | None = None):
    from sklearn.feature_extraction.text import TfidfVectorizer

    options = {"ngram_range": ngram_range, "min_df": min_df, "max_features": max_features}
    if analyzer == "word":  # morpheme strings: `form/TAG` tokens split on spaces, tags kept as written
        options.update(token_pattern=r"\S+", lowercase=False)
    return TfidfVectorizer(analyzer=analyzer, sublinear_tf=True, dtype=np.float32, **options)


def _feature_blocks(features: str, max_features: int, morphemes: bool) -> dict:
    """Each block's vectorizer by the column it reads (`_columns`), in the matrix's order."""
    if features == "context":  # the text across word boundaries and the words on each side of the target
        return {
            "text": _tfidf("char", (2, 5), 2, max_features),
            "left": _tfidf("char_wb", (1, 3), 2),
            "right": _tfidf("char_wb", (1, 3), 2),
            "target": _tfidf("char_wb", (1, 3)),
        }
    blocks = {"text": _tfidf("char_wb", (1, 4), 2, max_features)}
    if morphemes:
        blocks["morphemes"] = _tfidf("word", (1, 2), 2, max_features)
    return {**blocks, "target": _tfidf("char_wb", (1, 3))}


def _columns(rows: RowTable, names) -> dict[str, list[str]]:
    """The strings each block reads: the text, its morphemes, the target and the text's `_CONTEXT_CHARS` on its
    left and right (empty without a target)."""
    texts, targets = (arrow_column(rows, name).to_pylist() for name in ("text", "target"))
    columns = {"text": texts, "target": [target or "" for target in targets]}
    if "morphemes" in names:
        from nikl_emotion.text.morphemes import morpheme_strings

        columns["morphemes"] = morpheme_strings(texts)
    if "left" in names or "right" in names:
        begins, ends = (arrow_column(rows, name).to_pylist() for name in ("target_begin", "target_end"))
        columns["left"] = ["" if b is None else t[max(0, b - _CONTEXT_CHARS) : b] for t, b in zip(texts, begins)]
        columns["right"] = ["" if e is None else t[e : e + _CONTEXT_CHARS] for t, e in zip(texts, ends)]
    return columns


class NgramClassifier:
    """TF-IDF blocks of the cleaned row, then an L2 logistic regression per label. `features` "tfidf": the text's
    character 1-4-grams (within word boundaries), its morpheme 1-2-grams (`form/TAG` from kiwipiepy, `morphemes`)
    and the target's character 1-3-grams; "context": the text's character 2-5-grams across word boundaries, the
    character 1-3-grams of the `_CONTEXT_CHARS` on each side of the target, and the target's (a second view of
    the row, for a stack). A label absent (or always present) in the training rows gets its constant rate instead
    of a regression, which cannot be fitted on one class."""

    def __init__(
        self, c: float = 4.0, max_features: int = 300_000, seed: int = 42, morphemes: bool = True, features="tfidf"
    ):
        self.c, self.max_features, self.seed, self.morphemes = c, max_features, seed, morphemes
        self.features, self.vectorizers = features, {}
        self.models: list = []

    def __setstate__(self, state: dict) -> None:
        """Models saved before `features` kept their three vectorizers as attributes: read them as blocks."""
        if "vectorizers" not in state:
            named = (("text", "text_features"), ("morphemes", "morpheme_features"), ("target", "target_features"))
            state["vectorizers"] = {name: state[key] for name, key in named if state.get(key) is not None}
            state["features"] = "tfidf"
        self.__dict__.update(state)

    def _features(self, rows: RowTable, fit: bool = False):
        """The feature matrix of cleaned rows; with `fit`, the vectorizers are fitted on them first (in one pass)."""
        from scipy.sparse import hstack

        if fit:
            self.vectorizers = _feature_blocks(self.features, self.max_features, self.morphemes)
        columns = _columns(rows, self.vectorizers)
        if fit and not any(columns["target"]):  # data without targets (all null, e.g. KOTE) has no target block
            self.vectorizers.pop("target")
        transform = "fit_transform" if fit else "transform"
        return hstack([getattr(v, transform)(columns[name]) for name, v in self.vectorizers.items()]).tocsr()

    def fit(self, rows: Dataset) -> NgramClassifier:
        """Fit on cleaned rows (`text`, `target`, `labels`)."""
        from joblib import Parallel, delayed

        features = self._features(rows, fit=True)
        features.sort_indices()  # the workers get it read-only (memory-mapped): nothing may sort it in place there
        labels = np.asarray(rows["labels"]) > 0.5
        # liblinear holds the GIL: one process per core for the 8 independent regressions
        self.models = Parallel(n_jobs=min(NUM_LABELS, os.cpu_count() or 1))(
            delayed(fit_label)(features, labels[:, j], self.c, self.seed) for j in range(NUM_LABELS)
        )
        return self

    def predict_proba(self, rows: RowTable) -> np.ndarray:
        """Probabilities (rows, 8) of cleaned rows, in their order."""
        if len(rows) == 0:
            return np.empty((0, NUM_LABELS))
        features = self._features(rows)
        return np.stack([label_probability(model, features) for model in self.models], axis=1)

    def save(self, folder: str) -> None:
        import joblib

        os.makedirs(folder, exist_ok=True)
        joblib.dump(self, os.path.join(folder, NGRAM_MODEL_FILE))
        write_json_atomic(
            os.path.join(folder, NGRAM_INFO_FILE),
            {
                "model": NGRAM_PREFIX + self.features,
                "labels": list(LABELS),
                "c": self.c,
                "max_features": self.max_features,
            },
        )

    @classmethod
    def load(cls, folder: str) -> NgramClassifier:
        """The model of a `best/` folder; refuses other label sets and damaged files, naming the folder."""
        import joblib

        try:
            with open(os.path.join(folder, NGRAM_INFO_FILE), encoding="utf-8") as handle:
                info = json.load(handle)
            model = joblib.load(os.path.join(folder, NGRAM_MODEL_FILE))
        except Exception as exc:  # missing or damaged files
            raise PipelineError(f"{folder}: cannot load the n-gram model ({type(exc).__name__}: {exc})") from None
        if not isinstance(info, dict) or info.get("labels") != list(LABELS) or not isinstance(model, cls):
            raise PipelineError(f"{folder}: not an n-gram model of this pipeline's labels {list(LABELS)}")
        return model


class NgramRuntime:
    """An n-gram model behind `EmotionClassifier`: it reads cleaned text, not token batches."""

    reads_text = True

    def __init__(self, model: NgramClassifier):
        self.model = model

    def predict_rows(self, cleaned: RowTable) -> np.ndarray:
        return self.model.predict_proba(cleaned)


def train_ngram(train_rows: Dataset, seed: int, features: str = "tfidf") -> tuple[NgramClassifier, float]:
    """(the fitted model, seconds)."""
    start = time.perf_counter()
    model = NgramClassifier(seed=seed, features=features).fit(train_rows)
    return model, time.perf_counter() - start


def train_ngram_fold(settings: RunSettings, data: FoldData, folder: FoldFolder | None = None) -> dict:
    """The n-gram member's fold: fit on the fold's cleaned training rows, predict its validation and test rows, and
    write the same files as an encoder's fold (best/ holds the fitted model)."""
    folder = folder or RunFolder(settings.training.output_dir).fold(data.fold)
    features = settings.model.model_name_or_path[len(NGRAM_PREFIX) :]
    model, seconds = train_ngram(data.train_rows, settings.training.seed, features)
    val_rows = data.val_rows
    val_probs = model.predict_proba(val_rows)
    test_probs = model.predict_proba(data.encoded_test) if data.encoded_test is not None else None
    result = score(np.asarray(val_rows["labels"]), fixed_rule(settings.decision).decide(val_probs))
    replace_best(folder, data.preprocessing, model.save)
    result.update(
        {
            "fold": data.fold,
            "best_checkpoint": None,
            "best_metric": result["micro_f1"],
            "epochs_run": None,
            "train_rows": int(len(data.train_index)),
            "train_seconds": round(seconds, 1),
            "pseudo_label_rows": pseudo_label_rows(data),
        }
    )
    write_fold_outputs(folder, val_rows, val_probs, data.encoded_test, test_probs, result)
    logger.info(
        "fold %d: n-gram model fitted on %d rows in %.1f s; validation micro-F1 %.4f",
        data.fold,
        len(data.train_index),
        seconds,
        result["micro_f1"],
    )
    return result


class NgramBackend(FoldBackend):
    """`ngram:<features>`: fits on one process in seconds to minutes; no tokenizer, no Trainer, none of the abilities
    but its own folds."""

    name = "ngram"
    supports_early_stopping_split = False  # it chooses no epoch: its out-of-fold probabilities are unseen already
    supports_time_budget = False  # no schedule to fit into minutes: a fold takes seconds

    def matches(self, model_name_or_path: str) -> bool:
        return is_ngram(model_name_or_path)

    def check_spec(self, model_name_or_path: str) -> None:
        check_ngram_spec(model_name_or_path)

    def pretokenizer_of(self, model_name_or_path: str) -> str | None:
        return None  # no tokenizer: its morpheme features come from kiwipiepy whatever the setting

    def prepare(
        self, settings: RunSettings, preprocessing, cleaned: Dataset, cleaned_test: Dataset | None, other_texts=()
    ) -> PreparedRun:
        """It reads the cleaned text itself: no backbone, no tokens."""
        return PreparedRun(settings.model.model_name_or_path, None, cleaned, cleaned_test, lambda rows: rows)

    def train_fold(self, settings: RunSettings, data: FoldData, folder: FoldFolder | None = None) -> dict:
        return train_ngram_fold(settings, data, folder)

    def owns_checkpoint(self, folder: str) -> bool:
        return is_ngram_folder(folder)

    def check_loading(self, model_name_or_path: str, loading) -> None:
        """No checkpoint is loaded: the model-loading keys do not apply."""

    def load_checkpoint(
        self, folder: str, device=None, threads: int | None = None, options=None
    ) -> CheckpointClassifier:
        """The fitted model behind `CheckpointClassifier` (it reads cleaned text: no tokenizer, no device, no dtype)."""
        return CheckpointClassifier(
            NgramRuntime(NgramClassifier.load(folder)), None, Preprocessing.load(folder), source=folder
        )
