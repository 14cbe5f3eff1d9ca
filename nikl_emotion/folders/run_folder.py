"""The layout of the folders the commands write, in one place: every path under a run's `output_dir` (run files,
fold files, checkpoints, plots), a post-training, student and stack folder, the names `--overwrite` deletes (derived
from the same names), whether a configuration or an input changed, and pruning half-written checkpoints. No other
module spells a run file's name (folder_kind.py, which claims and prepares folders, reads them here).

```
OUT/config.yaml  inputs.json  backbone/  oof.jsonl  summary.json  thresholds.json  submission.jsonl  decision.json
OUT/report.md  *.png
OUT/fold_K/best/  checkpoints/  runs/  val_probs.jsonl  test_probs.jsonl  metrics.json  done.json
OUT/.fold_K.lock  .setup.lock  .hp_search.lock  (flock files; never deleted, see locking.py)
```
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass

import yaml

from nikl_emotion.base.checkpoint_files import BACKBONE_SPEC_FILE, POST_TRAIN_FILE, SAVED_MODEL_FILE
from nikl_emotion.base.errors import PipelineError
from nikl_emotion.base.fileio import file_digest

__all__ = [
    "CONFIG_FILE",
    "INPUTS_FILE",
    "SUBMISSION_FILE",
    "PLOT_NAMES",
    "plot_file",
    "PLOTS",
    "HP_SEARCH_FILES",
    "FOLD_PATTERN",
    "DONE_FILE",
    "is_run_file",
    "FoldFolder",
    "property_names",
    "RunFolder",
    "PostTrainFolder",
    "read_mapping",
    "input_digests",
    "inputs_difference",
    "config_difference",
    "last_complete_checkpoint",
    "DISTILL_FILE",
    "STUDENT_FILES",
    "StackFolder",
    "RecipeFolder",
]


CONFIG_FILE = "config.yaml"  # written first (the resolved configuration)
INPUTS_FILE = "inputs.json"  # sha256 of each input file: results are refused against changed data
_BACKBONE_DIR = "backbone"
_OOF_FILE = "oof.jsonl"
_SUMMARY_FILE = "summary.json"
_THRESHOLDS_FILE = "thresholds.json"
SUBMISSION_FILE = "submission.jsonl"
_REPORT_FILE = "report.md"
_DECISION_FILE = "decision.json"  # the DecisionRule submission.jsonl was made with
PLOT_NAMES = ("per_label_f1", "threshold_curves", "label_counts", "label_totals")  # report.md shows each as NAME.png


def plot_file(name: str) -> str:
    """The file name of one of the report's plots (`PLOT_NAMES`), as report.md links it."""
    if name not in PLOT_NAMES:
        raise ValueError(f"unknown plot {name!r}; one of {', '.join(PLOT_NAMES)}")
    return f"{name}.png"


PLOTS = tuple(plot_file(name) for name in PLOT_NAMES)
_RUN_FILES = (
    CONFIG_FILE,
    INPUTS_FILE,
    _BACKBONE_DIR,
    _OOF_FILE,
    _SUMMARY_FILE,
    _THRESHOLDS_FILE,
    SUBMISSION_FILE,
    _DECISION_FILE,
    _REPORT_FILE,
    *PLOTS,
)
# what train.py --hp-search writes; not run files: --overwrite keeps them, as the study accumulates over commands
HP_SEARCH_FILES = ("hp_search_config.yaml", "hp_search_trials", "hp_search.db", "hp_search.csv", "hp_search_best.yaml")
FOLD_PATTERN = re.compile(r"fold_(\d+)")
DONE_FILE = "done.json"  # written last in a fold: the fold is complete only when it exists


def is_run_file(name: str) -> bool:
    """A top-level name a training run writes (and `--overwrite` deletes)."""
    return name in _RUN_FILES or FOLD_PATTERN.fullmatch(name) is not None


@dataclass(frozen=True)
class FoldFolder:
    root: str

    def _path(self, name: str) -> str:
        return os.path.join(self.root, name)

    best = property(lambda self: self._path("best"))
    best_staging = property(lambda self: self._path("best.partial"))  # written, then renamed to best/
    checkpoints = property(lambda self: self._path("checkpoints"))  # the Trainer's; deleted when the fold ends
    runs = property(lambda self: self._path("runs"))  # TensorBoard logs, kept
    val_probs = property(lambda self: self._path("val_probs.jsonl"))
    test_probs = property(lambda self: self._path("test_probs.jsonl"))
    metrics = property(lambda self: self._path("metrics.json"))
    done = property(lambda self: self._path(DONE_FILE))

    def is_done(self, fold: int) -> bool:
        return read_mapping(self.done).get("fold") == fold

    @classmethod
    def file_names(cls) -> tuple[str, ...]:
        """Every name a fold folder may hold (e.g. what `--overwrite` may remove from a folder laid out as one)."""
        return property_names(cls)


def property_names(folder_class) -> tuple[str, ...]:
    """The names a folder class's path properties spell (each property is `root/NAME`)."""
    blank = folder_class("")
    return tuple(getattr(blank, name) for name, value in vars(folder_class).items() if isinstance(value, property))


@dataclass(frozen=True)
class RunFolder:
    root: str

    def _path(self, name: str) -> str:
        return os.path.join(self.root, name)

    config = property(lambda self: self._path(CONFIG_FILE))
    inputs = property(lambda self: self._path(INPUTS_FILE))
    backbone = property(lambda self: self._path(_BACKBONE_DIR))
    oof = property(lambda self: self._path(_OOF_FILE))
    summary = property(lambda self: self._path(_SUMMARY_FILE))
    thresholds = property(lambda self: self._path(_THRESHOLDS_FILE))
    submission = property(lambda self: self._path(SUBMISSION_FILE))
    report = property(lambda self: self._path(_REPORT_FILE))
    decision = property(lambda self: self._path(_DECISION_FILE))
    setup_lock = property(lambda self: self._path(".setup.lock"))
    backbone_spec = property(
        lambda self: os.path.join(self.backbone, BACKBONE_SPEC_FILE)
    )  # what the backbone was built from
    # train.py --hp-search N (HP_SEARCH_FILES, kept by --overwrite: the study accumulates over commands)
    hp_config = property(lambda self: self._path(HP_SEARCH_FILES[0]))
    hp_trials = property(lambda self: self._path(HP_SEARCH_FILES[1]))  # the Trainer's output_dir (no checkpoints)
    hp_study = property(lambda self: self._path(HP_SEARCH_FILES[2]))  # the Optuna study (SQLite)
    hp_table = property(lambda self: self._path(HP_SEARCH_FILES[3]))  # one row per trial
    hp_best = property(lambda self: self._path(HP_SEARCH_FILES[4]))  # the best trial's values
    hp_lock = property(lambda self: self._path(".hp_search.lock"))  # the workers sharing the folder take turns

    def plot(self, name: str) -> str:
        """The path of one of the report's plots (`PLOT_NAMES`)."""
        return self._path(plot_file(name))

    def fold(self, k: int) -> FoldFolder:
        return FoldFolder(self._path(f"fold_{k}"))

    def fold_lock(self, k: int) -> str:
        return self._path(f".fold_{k}.lock")

    def has_results(self) -> bool:
        """Whether anything a fold produced is here (a fold_K folder): what a changed configuration must not mix
        with."""
        return os.path.isdir(self.root) and any(FOLD_PATTERN.fullmatch(name) for name in os.listdir(self.root))


@dataclass(frozen=True)
class PostTrainFolder:
    """A post_train.py output folder: when finished, a model folder (config.json, weights, tokenizer,
    preprocessing.json) that train.py fine-tunes, plus its summary `post_train.json`, written last."""

    root: str

    def _path(self, name: str) -> str:
        return os.path.join(self.root, name)

    summary = property(lambda self: self._path(POST_TRAIN_FILE))
    checkpoints = property(lambda self: self._path("checkpoints"))  # the Trainer's; deleted once the model is saved
    runs = property(lambda self: self._path("runs"))  # TensorBoard logs, kept
    eval_loss_before = property(lambda self: self._path("eval_loss_before.json"))  # survives a resume
    time_budget = property(lambda self: self._path("time_budget.json"))  # the steps planned: a resume keeps them
    lock = property(lambda self: self._path(".post_train.lock"))

    def is_finished(self) -> bool:
        return os.path.isfile(self.summary)

    def has_results(self) -> bool:
        """Checkpoints or a saved model: what a changed configuration must not silently replace."""
        return any(os.path.exists(path) for path in (self.checkpoints, self._path("config.json"), self.summary))

    @staticmethod
    def is_run_file(name: str) -> bool:
        """What post_train.py writes (and `--overwrite` deletes): its own files and the saved model's; nothing else
        a user put in the folder."""
        return name in _POST_TRAIN_OWN_FILES or SAVED_MODEL_FILE.fullmatch(name) is not None


# its path properties but the lock (flock files are never deleted, see locking.py), and the run files beside them
_POST_TRAIN_OWN_FILES = frozenset(
    {CONFIG_FILE, INPUTS_FILE, *(name for name in property_names(PostTrainFolder) if not name.endswith(".lock"))}
)


def read_mapping(path: str) -> dict:
    """The mapping in a YAML or JSON file (config.yaml, inputs.json, done.json); {} when the file is absent."""
    if not os.path.exists(path):
        return {}
    try:
        with open(path, encoding="utf-8") as handle:
            # JSON read as JSON: YAML 1.1 would take a number such as 1e-05 for a string
            data = json.load(handle) if path.endswith(".json") else yaml.safe_load(handle)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise PipelineError(f"{path}: cannot read ({exc})") from None
    return data if isinstance(data, dict) else {}


def input_digests(paths: list[str]) -> dict[str, str]:
    """{path: sha256 of its bytes}: what a run's results were computed from."""
    return {path: file_digest(path) for path in paths}


def inputs_difference(old: dict, new: dict) -> str | None:
    """The first input file whose content differs between two `inputs.json` records ({path: sha256})."""
    for path in sorted(set(old) | set(new)):
        if path in old and path in new and old[path] != new[path]:
            return f"{path} changed since this run's folds were trained (its content differs)"
    return None


# Keys that do not change a run's results: an existing output_dir may be resumed with other values for them.
_RESUMABLE_KEYS = frozenset(
    {
        "fold",
        "overwrite",
        "output_dir",
        "disable_tqdm",
        "dataloader_num_workers",
        "per_device_eval_batch_size",
        "report_to",
        "logging_strategy",
        "logging_steps",
        "log_level",  # what is printed, not what is trained
        "log_level_replica",
        "log_on_each_node",
        "resume_from_checkpoint",
        "decision",  # chooses how the finished folds are combined, after training: no fold depends on it
        "max_unknown_rate",  # a stop before training, not a setting of it
    }
)


def config_difference(old: dict, new: dict, defaults: dict | None = None) -> str | None:
    """The first result-affecting key whose value differs between two resolved configs, as `key: old -> new`. A key
    missing from one side reads as its value in `defaults` (the settings dataclasses' defaults,
    `config.field_defaults`):
    a key added after a run was written is, at its default, what that run did, so an older run still resumes."""
    defaults = defaults or {}
    for key in sorted(set(old) | set(new)):
        default = defaults.get(key)
        if key not in _RESUMABLE_KEYS and old.get(key, default) != new.get(key, default):
            return f"{key}: {old.get(key, '(default)')!r} -> {new.get(key, '(default)')!r}"
    return None


def last_complete_checkpoint(folder: str, required: tuple[str, ...] = ()) -> str | None:
    """The newest checkpoint that was written to the end (its trainer_state.json is saved last, then the `required`
    files written after the Trainer's); newer, partial ones (a kill during saving) are deleted so the Trainer does
    not trip over them."""
    if not os.path.isdir(folder):
        return None
    steps = sorted(
        (int(name.split("-")[-1]), name) for name in os.listdir(folder) if re.fullmatch(r"checkpoint-\d+", name)
    )
    for _, name in reversed(steps):
        path = os.path.join(folder, name)
        if all(os.path.exists(os.path.join(path, name)) for name in ("trainer_state.json", *required)):
            return path
        shutil.rmtree(path, ignore_errors=True)
    return None


DISTILL_FILE = "distill.json"  # distill.py's summary: the student beside the teacher
STUDENT_FILES = (*FoldFolder.file_names(), CONFIG_FILE, INPUTS_FILE, _BACKBONE_DIR, SUBMISSION_FILE, DISTILL_FILE)

_STACK_FILE = "stack.json"  # written last by ensemble.py --output_dir: the members, the stacker, its scores


@dataclass(frozen=True)
class StackFolder:
    """An `ensemble.py --runs A B --strategy stack --output_dir S` folder: a servable stack of finished runs."""

    root: str

    def _path(self, name: str) -> str:
        return os.path.join(self.root, name)

    stack = property(lambda self: self._path(_STACK_FILE))
    decision = property(
        lambda self: self._path(_DECISION_FILE)
    )  # the rule the folds' stacked probabilities are voted by
    submission = property(lambda self: self._path(SUBMISSION_FILE))  # for the members' test file
    test_probs = property(lambda self: self._path("test_probs.jsonl"))  # the folds' mean stacked probabilities


@dataclass(frozen=True)
class RecipeFolder:
    """A `recipe.py` output folder: the plan and what each stage spent (`recipe.json`), and one folder per stage, each
    the folder of the command that stage runs (its own kind, checked and resumed as that command does)."""

    root: str

    def _path(self, name: str) -> str:
        return os.path.join(self.root, name)

    record = property(lambda self: self._path("recipe.json"))  # rewritten after every stage
    ngram = property(lambda self: self._path("ngram"))  # train.py, the n-gram member of --ngram_config
    ngram_context = property(lambda self: self._path("ngram-context"))  # the same on ngram:context, the other view
    calibration = property(lambda self: self._path(".calibration"))  # a fold's costs measured; deleted after
    post_train = property(lambda self: self._path("post-train"))  # post_train.py's backbone
    fine_tune = property(lambda self: self._path("fine-tune"))  # train.py, the K-fold fine-tuning of it
    stack = property(lambda self: self._path("stack"))  # ensemble.py --strategy stack of the three runs
    lock = property(lambda self: self._path(".recipe.lock"))  # one recipe per folder at a time

    @property
    def stacked(self) -> list[str]:
        """The runs the stack stage stacks, in its order: the fine-tuned run and the two n-gram views."""
        return [self.fine_tune, self.ngram, self.ngram_context]
