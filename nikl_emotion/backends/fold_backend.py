"""What every backend's fold gets and gives: `FoldData` (the fold's rows, the backbone to start from), the
`FoldBackend` interface a backend implements (registry.py lists them) with the abilities it may offer (`SearchTrials`,
`PostTrainer`, `OnnxExporter`, `CostMeter`: what a program uses, asked of the backend object), and the fold's
files, written the same way for every backend (probabilities, metrics, then `done.json`, the mark of a complete
fold)."""

from __future__ import annotations

import os
import shutil
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from datasets import Dataset, concatenate_datasets

from nikl_emotion.base.config import ModelArguments, PostTrainSettings, RunSettings
from nikl_emotion.base.errors import PipelineError
from nikl_emotion.base.fileio import write_json_atomic, write_probs
from nikl_emotion.folders.run_folder import FoldFolder
from nikl_emotion.text.data import iter_column
from nikl_emotion.text.preprocessing import Preprocessing

__all__ = [
    "PreparedRun",
    "FoldBackend",
    "SearchTrials",
    "TrialFold",
    "PostTrainer",
    "OnnxExporter",
    "CostMeter",
    "FoldCost",
    "FoldData",
    "pseudo_label_rows",
    "write_fold_outputs",
    "replace_best",
]


@dataclass
class PreparedRun:
    """What a backend made ready for a run's folds: where each fold's model starts (`backbone`), its tokenizer (None
    for a backend that reads text), the training and test rows as its folds read them, and `encode` for more cleaned
    rows (pseudo-labelled, unlabelled, validation rows)."""

    backbone: str
    tokenizer: object | None
    encoded: Dataset
    encoded_test: Dataset | None
    encode: Callable[[Dataset], Dataset]


class FoldBackend(ABC):
    """A way to train and load fold models; a new one subclasses this and is passed to `registry.register_backend`.

    Required: `matches` (the `model_name_or_path` values it trains), `prepare` (the run's rows made ready, once per
    run), `train_fold` (one fold trained, its checkpoint folder `best/` saved, which `EmotionClassifier.
    from_pretrained` loads, and the fold's files written), `owns_checkpoint` and `load_checkpoint` (its `best/`
    folders, as a `classifier.CheckpointClassifier`). Optional: `check_spec` and `check_loading` (refuse a bad
    name or loading key before any work; nothing to refuse by default) and `pretokenizer_of` (None: any).

    Abilities the programs above ask instead of the backend's name, none offered unless a backend says so. Yes/no
    facts: `supports_techniques` (the fine-tuning techniques of TechniqueArguments), `supports_multi_process` (it
    may run under `accelerate launch`), `supports_early_stopping_split` (its training chooses an epoch, on held-out
    rows if asked), `supports_time_budget` (its fold's schedule can follow `FoldData.ends_at`), `heads` (the
    `classifier_head` values it builds; empty for a model without one). Programs it enables, each a method returning
    the object that program uses or None: `search_trials` (`train.py --hp-search`), `post_trainer`
    (`post_train.py`), `student` (`distill.py`'s student), `onnx_exporter` (`export.py`), `cost_meter` (the recipe's
    plan of fine-tuning); and `check_lora` (LoRA
    adapters: refused unless the backend overrides it with what they need)."""

    name: str = ""
    supports_techniques: bool = False
    supports_multi_process: bool = False
    supports_early_stopping_split: bool = False
    supports_time_budget: bool = False
    heads: tuple[str, ...] = ()

    def search_trials(self) -> SearchTrials | None:
        """The trials of `train.py --hp-search` (None: no search offered)."""
        return None

    def post_trainer(self) -> PostTrainer | None:
        """Continued pretraining for `post_train.py` (None: not offered)."""
        return None

    def student(self) -> FoldBackend | None:
        """The backend that trains `distill.py`'s student from this model name: one whose `train_fold` learns
        soft targets (probabilities as labels) and its unlabelled rows (None: it cannot be a student)."""
        return None

    def onnx_exporter(self) -> OnnxExporter | None:
        """The export of this backend's checkpoints for `export.py` (None: its checkpoints predict as they are)."""
        return None

    def cost_meter(self) -> CostMeter | None:
        """What its folds cost on this machine, measured before they train (the recipe's plan; None: not offered)."""
        return None

    @abstractmethod
    def matches(self, model_name_or_path: str) -> bool: ...

    def check_spec(self, model_name_or_path: str) -> None:
        """Refuse a `model_name_or_path` this backend cannot train, before any work (nothing to refuse here)."""
        return None

    def check_loading(self, model_name_or_path: str, loading) -> None:
        """The model-loading keys (base.config.ModelLoading) checked against the checkpoint before any work
        (nothing to check here)."""
        return None

    def check_lora(self, model_args) -> None:
        """LoRA adapters (`lora_r` > 0), checked before any work: a backend that trains them checks what they need
        (peft, the target modules); here they are not offered."""
        raise PipelineError(
            f"lora_r: LoRA is for decoder backbones (causal LMs); {model_args.model_name_or_path} is "
            f"trained by the {self.name} backend: set lora_r: 0 (a hub "
            "decoder whose config.json cannot be read here, offline or misspelt, reads as an encoder)"
        )

    def pretokenizer_of(self, model_name_or_path: str) -> str | None:
        """The pre-tokenizer the model's tokenizer learned (None: any, it learns here or has no tokenizer)."""
        return None

    @abstractmethod
    def prepare(
        self,
        settings: RunSettings,
        preprocessing: Preprocessing,
        cleaned: Dataset,
        cleaned_test: Dataset | None,
        other_texts: list[str] | tuple = (),
    ) -> PreparedRun: ...

    @abstractmethod
    def train_fold(self, settings: RunSettings, data: FoldData, folder: FoldFolder | None = None) -> dict: ...

    @abstractmethod
    def owns_checkpoint(self, folder: str) -> bool:
        """Whether `folder` is a checkpoint this backend saved."""

    @abstractmethod
    def load_checkpoint(self, folder: str, device=None, threads: int | None = None, options=None):
        """The checkpoint as a `classifier.CheckpointClassifier` (predict_proba, predict), loaded with `options`
        (precision.LoadOptions)."""


@dataclass
class FoldData:
    """One fold's inputs: its training and validation rows (indices into `encoded`), the encoded test rows, the
    backbone to start from and how text was prepared."""

    fold: int
    train_index: np.ndarray
    val_index: np.ndarray
    encoded: Dataset
    encoded_test: Dataset | None
    backbone: str
    preprocessing: Preprocessing
    extra_train_rows: Dataset | None = None  # pseudo-labelled rows, training only (pseudo_labels.py)
    # early_stopping_split: rows of the fold's training share, held out of train_index, that choose the epoch
    held_out_choosing_index: np.ndarray | None = None
    # time_budget_minutes: the time.monotonic() by which the fold's training and predicting end (None: no budget)
    ends_at: float | None = None

    @property
    def train_rows(self) -> Dataset:
        rows = self.encoded.select(self.train_index)
        if self.extra_train_rows is None or len(self.extra_train_rows) == 0:
            return rows
        return concatenate_datasets([rows, self.extra_train_rows.select_columns(rows.column_names).cast(rows.features)])

    @property
    def val_rows(self) -> Dataset:
        return self.encoded.select(self.val_index)

    @property
    def choosing_rows(self) -> Dataset:
        """The rows that choose the epoch (early stopping, the best checkpoint): the held-out share of the training
        rows with `early_stopping_split`, else the validation rows."""
        return (
            self.val_rows if self.held_out_choosing_index is None else self.encoded.select(self.held_out_choosing_index)
        )


def pseudo_label_rows(data: FoldData) -> int:
    return 0 if data.extra_train_rows is None else len(data.extra_train_rows)


def write_fold_outputs(
    folder: FoldFolder,
    val_rows: Dataset,
    val_probs: np.ndarray,
    test_rows: Dataset | None,
    test_probs: np.ndarray | None,
    result: dict,
) -> None:
    """Probability files and metrics, then `done.json` (the fold is complete only once it exists); the Trainer's
    checkpoints go (the best one is in best/)."""
    write_probs(folder.val_probs, iter_column(val_rows, "id"), val_probs)
    if test_probs is not None:
        write_probs(folder.test_probs, iter_column(test_rows, "id"), test_probs)
    write_json_atomic(folder.metrics, result)
    write_json_atomic(folder.done, {"fold": result["fold"]})
    shutil.rmtree(folder.checkpoints, ignore_errors=True)


def replace_best(folder: FoldFolder, preprocessing: Preprocessing, write: Callable[[str], None]) -> None:
    """The fold's checkpoint: `write(path)` saves the model into a folder beside `best/`, the preprocessing settings
    join it, then it is renamed to `best/`, so a kill never leaves a half-written one (every backend saves this way)."""
    shutil.rmtree(folder.best_staging, ignore_errors=True)
    write(folder.best_staging)
    preprocessing.save(folder.best_staging)
    shutil.rmtree(folder.best, ignore_errors=True)
    os.replace(folder.best_staging, folder.best)


# What a backend may offer besides training folds, each an object a program asks its backend for (a `FoldBackend`
# method returns it, or None for "not offered"). A program holds only these interfaces, never a backend's modules: a
# new backend offers an ability by returning its own object.


@dataclass
class TrialFold:
    """A search trial's result on one fold: the choosing rows' gold labels and the trial's decisions on them at its
    best epoch (rows in the same order in both, any order), pooled with the other folds' into its score."""

    gold: np.ndarray
    decided: np.ndarray


class SearchTrials(ABC):
    """A backend's hyper-parameter trials: the values a trial draws, and a trial's result on one fold's split."""

    @abstractmethod
    def suggest(self, trial, settings: RunSettings) -> dict:
        """The trial's values (an Optuna trial's `suggest_*`), keyed by the settings' own keys (`learning_rate`,
        `focal_gamma`, ...), centred on `settings` so one space suits any backbone."""

    @abstractmethod
    def score(self, settings: RunSettings, prepared: PreparedRun, data: FoldData, output_dir: str) -> TrialFold:
        """Train on `data`'s training rows with `settings` (the trial's values applied) and return its decisions on
        `data.choosing_rows` at its best epoch (by micro-F1); nothing is kept but scratch files under `output_dir`.
        Every process of a launch calls it and gets the whole result."""


class PostTrainer(ABC):
    """A backend's continued pretraining on unlabelled task text (`post_train.py`): the architecture's part. The
    program reads the files, plans the time budget, runs the Trainer and saves the folder."""

    @abstractmethod
    def check(self, model_args: ModelArguments, objective: str) -> None:
        """Refuse a backbone this objective (`mlm`, `rtd`) cannot train, before any work."""

    @abstractmethod
    def model_and_tokenizer(self, settings: PostTrainSettings, texts: list[str], preprocessing: Preprocessing):
        """(the model to save, its tokenizer) for `settings.objective`: from the hub name or folder, or a new
        backbone built on `texts` (its tokenizer saved to the output folder at once, so a resumed run and every
        process use the very vocabulary its checkpoints learned)."""

    @abstractmethod
    def training_model(self, model, objective_args):
        """The module the Trainer trains for `objective_args` (MLMArguments): `model` itself with a cheaper
        forward, or a wrapper that holds it (RTD's generator and discriminator); saving `model` saves the result."""


class OnnxExporter(ABC):
    """A backend's export of a checkpoint to an ONNX graph that `EmotionClassifier` serves."""

    @abstractmethod
    def export(self, checkpoint: str, staging: str, *, int8: bool, opset: int) -> dict:
        """Write the graph and what prediction needs into `staging` (a folder renamed into place afterwards);
        returns the record written as export.json."""


@dataclass(frozen=True)
class FoldCost:
    """What a fold's parts cost on this machine: the recipe's plan multiplies them by the fold's counts (its epochs,
    the rows it evaluates and predicts)."""

    seconds_per_step: float  # one optimizer step at the run's batch size, accumulation and processes
    steps_per_epoch: int  # the fold's optimizer steps in one epoch, as its trainer batches them
    seconds_per_predicted_row: float  # an evaluation's or a prediction's seconds per row
    seconds_per_save: float  # one checkpoint written
    seconds_to_build: float  # the fold's model and trainer built


class CostMeter(ABC):
    """A backend's measurement of one fold's costs before any fold trains: a few real steps of the fold's own
    trainer, a prediction and a save, with nothing of them kept."""

    @abstractmethod
    def measure(self, settings: RunSettings, data: FoldData, scratch: str) -> FoldCost:
        """Build `data`'s fold as `train_fold` would (its files under `scratch`, which the caller deletes) and time
        its parts; the weights do not move."""
