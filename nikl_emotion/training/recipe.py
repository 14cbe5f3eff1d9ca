"""The offline recipe as one command that plans its minutes (`nikl-emotion recipe DATA_DIR --minutes 60`): two n-gram
members (--ngram_config's, and the same config on `ngram:context`, the row's other view), post-training, K-fold
fine-tuning of the post-trained backbone and the stack of the three runs, each stage the command a user would run
(`train.py`, `post_train.py`, `train.py`, `ensemble.py --strategy stack`) in its own folder under OUT, on its own
clock. recipe_plan.py plans the minutes; OUT/recipe.json keeps the plan and what each stage
spent, rewritten after every stage.

Order: one fold of fine-tuning measured on this machine (the calibration: a budget that fine-tuning alone exceeds
is refused within a minute), the n-gram members (their seconds measured, not planned), then post-training on the rest
of the budget, fine-tuning on the seconds left until the end less the stack's, and the stack. A stage whose output
exists is skipped, so a rerun resumes: a killed stage continues as its command does (post-training from its last
checkpoint with the minutes it was given, fine-tuning with its finished folds kept), and a resumed recipe's minutes
count from the rerun, less what the finished stages spent.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass

from nikl_emotion.backends.engines import release_memory
from nikl_emotion.backends.registry import offered
from nikl_emotion.base.config import PreprocessingArguments, RunSettings
from nikl_emotion.base.errors import PipelineError
from nikl_emotion.base.fileio import file_digest, write_json_atomic
from nikl_emotion.base.locking import exclusive
from nikl_emotion.decisions.voting import DecisionRule
from nikl_emotion.folders.folder_kind import check_output_folder, mark_folder
from nikl_emotion.folders.run_folder import PostTrainFolder, RecipeFolder, RunFolder, StackFolder, read_mapping
from nikl_emotion.runs.summary import this_machine
from nikl_emotion.training.recipe_plan import (
    EPOCHS_SHARE,
    FINE_TUNE_SHARE,
    STACK_PER_NGRAM,
    FoldCounts,
    fine_tuning_plan,
    margin_seconds,
    post_training_seconds,
    stack_seconds,
)

__all__ = [
    "CONTEXT_VIEW",
    "RecipeRequest",
    "RecipeFiles",
    "find_recipe_files",
    "run_recipe",
    "stage_commands",
]

logger = logging.getLogger(__name__)

# the second n-gram member: the row's other view (the target's surroundings), which the stack uses beside the first
# (BENCHMARKS.md, issue 50: on NIKL the two views stack to nested OOF 0.777 against 0.763 for one, chosen on OOF)
CONTEXT_VIEW = "ngram:context"


@dataclass(frozen=True)
class RecipeRequest:
    """What the user asked: the data folder, the minutes, the output folder, the seed (None: the configs' own) and
    the three configs every other setting comes from."""

    data_dir: str
    minutes: float
    output_dir: str
    seed: int | None
    post_train_config: str
    fine_tune_config: str
    ngram_config: str

    def __post_init__(self):
        if not (self.minutes > 0 and self.minutes < 10_080):  # nan and inf fail too
            raise PipelineError(f"--minutes: expected a number of minutes in (0, 10080), got {self.minutes}")
        for option, path in (
            ("--post_train_config", self.post_train_config),
            ("--fine_tune_config", self.fine_tune_config),
            ("--ngram_config", self.ngram_config),
        ):
            if not os.path.isfile(path):
                raise PipelineError(f"{option}: {path} not found")

    @property
    def budget_seconds(self) -> float:
        return self.minutes * 60


@dataclass(frozen=True)
class RecipeFiles:
    """DATA_DIR's files: the labelled training file, the file the runs predict (test.jsonl, else dev.jsonl; scored
    in recipe.json when it has labels) and every jsonl file's text for post-training (labels unused)."""

    train: str
    predicted: str
    texts: tuple[str, ...]


def find_recipe_files(data_dir: str) -> RecipeFiles:
    if not os.path.isdir(data_dir):
        raise PipelineError(f"DATA_DIR: {data_dir} is not a folder")
    train = os.path.join(data_dir, "train.jsonl")
    if not os.path.isfile(train):
        raise PipelineError(f"DATA_DIR: {train} not found; the recipe trains on DATA_DIR/train.jsonl")
    predicted = next(
        (path for name in ("test.jsonl", "dev.jsonl") if os.path.isfile(path := os.path.join(data_dir, name))), None
    )
    if predicted is None:
        raise PipelineError(
            f"DATA_DIR: {data_dir} holds neither test.jsonl nor dev.jsonl: the runs and the stack predict one of them"
        )
    others = sorted(set(glob.glob(os.path.join(data_dir, "*.jsonl"))) - {train, predicted})
    return RecipeFiles(train, predicted, (train, predicted, *others))


def stage_commands(request: RecipeRequest, files: RecipeFiles, budgets: dict) -> dict[str, list[str]]:
    """Each stage's command line (the config, then the recipe's keys); `budgets`: the minutes of post-training and
    fine-tuning (absent: not planned yet) and the calibration's model (the post-training config's backbone)."""
    folder = RecipeFolder(request.output_dir)
    seed = [] if request.seed is None else ["--seed", str(request.seed)]
    runs = ["--train_files", files.train, "--test_file", files.predicted, *seed]
    ngram = ["train.py", request.ngram_config, *runs, "--output_dir"]
    commands = {
        "ngram": [*ngram, folder.ngram],
        "ngram_context": [*ngram, folder.ngram_context, "--model_name_or_path", CONTEXT_VIEW],
        "post_train": [
            *("post_train.py", request.post_train_config, "--train_files", *files.texts),
            *("--output_dir", folder.post_train, *seed),
            *("--time_budget_minutes", _minutes(budgets.get("post_train", 1.0))),
        ],
        "fine_tune": [
            *("train.py", request.fine_tune_config, "--model_name_or_path", folder.post_train, *runs),
            *("--output_dir", folder.fine_tune, "--time_budget_minutes", _minutes(budgets.get("fine_tune", 1.0))),
        ],
        "stack": ["ensemble.py", "--runs", *folder.stacked, "--strategy", "stack", "--output_dir", folder.stack],
    }
    backbone = budgets.get("backbone")
    if backbone is not None:  # one fold of fine-tuning, on the architecture post-training will save
        model = ["--model_name_or_path", backbone["model_name_or_path"]]
        model += ["--offline_vocab_size", str(backbone["offline_vocab_size"])]
        cal = ["--output_dir", folder.calibration, "--fold", "0"]
        commands["calibration"] = ["train.py", request.fine_tune_config, *runs, *model, *cal]
    return commands


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.4f}"


def run_recipe(request: RecipeRequest, started: float | None = None) -> dict:
    """Plan and run the recipe's stages in OUT (resuming one there); returns recipe.json's content. `started` (a
    `time.monotonic()`): when the command began, so its imports and checks are paid from the budget too."""
    started = time.monotonic() if started is None else started
    folder, files = RecipeFolder(request.output_dir), find_recipe_files(request.data_dir)
    check_output_folder(folder.root, "recipe")
    _open_record(folder, request, files)  # another request's folder is refused first
    settings = _checked_settings(request, files)  # every config parsed and compared before any work
    mark_folder(folder.root, "recipe")
    with exclusive(folder.lock, folder.root):
        record = _open_record(folder, request, files)
        ledger = _Ledger(record, folder, started, request.budget_seconds)
        _run_stages(request, files, settings, ledger)
        record["scores"] = _scores(folder, files)
        # the budget's seconds spent: every attempt's finished stages and this command's own time (its start, its
        # checks and records); a killed attempt's unfinished stage and its start are not counted
        if ledger.ran or "spent_seconds" not in record:  # a rerun that found every stage done keeps the figures
            record["spent_seconds"] = round(ledger.spent(), 1)
            record["share_of_budget"] = round(record["spent_seconds"] / request.budget_seconds, 4)
            record["this_command_seconds"] = round(time.monotonic() - started, 1)
        ledger.write()
    return record


def _run_stages(request: RecipeRequest, files: RecipeFiles, settings: dict, ledger: _Ledger) -> None:
    from nikl_emotion.training.kfold import run_training
    from nikl_emotion.training.post_training import run_post_training

    folder, record = RecipeFolder(request.output_dir), ledger.record
    if "fine_tuning_plan" not in record:  # first: a budget fine-tuning alone exceeds is refused within a minute
        ledger.run("calibration", lambda: False, None, "one fold of fine-tuning measured on this machine")
        ledger.call("calibration", lambda: _calibrate(settings["calibration"], folder.calibration, ledger))
    how = "measured: it runs before the plan"
    for name, run in (("ngram", folder.ngram), ("ngram_context", folder.ngram_context)):
        ledger.run(name, lambda run=run: os.path.isfile(RunFolder(run).summary), None, how)
        ledger.call(name, lambda name=name: run_training(settings[name]))
    plan = record["fine_tuning_plan"]
    stack = stack_seconds(ledger.seconds_of("ngram", RunFolder(folder.ngram)))
    budgets = record.setdefault("budgets", {})
    if "post_train" not in budgets and not PostTrainFolder(folder.post_train).is_finished():
        budgets["post_train"] = post_training_seconds(ledger.budget, ledger.spent(), plan["seconds"] + stack)
    how = "the rest of the budget: less the later stages' plan and the margin"
    ledger.run("post_train", lambda: PostTrainFolder(folder.post_train).is_finished(), budgets.get("post_train"), how)
    ledger.call("post_train", lambda: run_post_training(_parse_post_train(request, files, budgets)))
    if "fine_tune" not in budgets and not os.path.isfile(RunFolder(folder.fine_tune).summary):
        budgets["fine_tune"] = _fine_tuning_seconds(ledger, plan["seconds"], stack)
    every = plan["every_epoch_seconds"]
    how = (
        f"{EPOCHS_SHARE:.0%} of the schedule at the measured costs (every epoch: {every:.0f} s), at most "
        f"{FINE_TUNE_SHARE:.0%} of the budget"
    )
    ledger.run("fine_tune", lambda: os.path.isfile(RunFolder(folder.fine_tune).summary), budgets.get("fine_tune"), how)
    ledger.call("fine_tune", lambda: run_training(_parse_run(stage_commands(request, files, budgets)["fine_tune"])))
    how = f"{STACK_PER_NGRAM} of the first n-gram member's seconds"
    ledger.run("stack", lambda: os.path.isfile(StackFolder(folder.stack).stack), stack, how)
    ledger.call("stack", lambda: _stack(folder))


def _fine_tuning_seconds(ledger: _Ledger, planned: float, stack: float) -> float:
    """Fine-tuning's minutes: the seconds left until the budget's end less the stack's and the margin (at least
    half its plan: a recipe late by more overruns rather than train folds for nothing)."""
    left = ledger.budget - ledger.spent() - stack - margin_seconds(ledger.budget)
    if left < planned:
        logger.info(
            "recipe: fine-tuning gets %.0f s of the %.0f s planned; its folds' schedules are compressed onto them",
            max(left, planned / 2),
            planned,
        )
    return round(max(left, planned / 2), 1)


class _Ledger:
    """recipe.json as the stages run: each stage's plan, status and seconds, written after every change. The
    seconds a resumed recipe has spent are its stages' recorded seconds plus this process's since it started."""

    def __init__(self, record: dict, folder: RecipeFolder, started: float, budget: float):
        self.record, self.folder, self.started, self.budget = record, folder, started, budget
        self.spent_before = sum(
            stage.get("seconds") or 0.0 for stage in record["stages"].values() if stage.get("status") == "done"
        )
        self._pending: str | None = None
        self.ran = False  # whether this command ran a stage

    def spent(self) -> float:
        """The budget's seconds spent: finished stages of earlier attempts and this process's time."""
        return self.spent_before + time.monotonic() - self.started

    def run(self, name: str, done: Callable[[], bool], planned: float | None, how: str) -> None:
        """Enter stage `name` (its plan recorded); `call` then runs it unless `done()` says its output exists."""
        stage = self.record["stages"].setdefault(name, {})
        stage.update({"planned_seconds": planned, "how": how})
        self._pending = None if done() else name
        if self._pending is None:
            if stage.get("status") != "done":
                stage.update({"status": "done", "seconds": stage.get("seconds")})
            logger.info("recipe: %s already done in %s; skipped", name, self.folder.root)
        self.write()

    def call(self, name: str, work: Callable[[], object]) -> None:
        if self._pending != name:
            return
        stage = self.record["stages"][name]
        stage["status"], self.ran = "running", True
        self.write()
        planned = stage.get("planned_seconds")
        logger.info("recipe: %s%s", name, "" if planned is None else f" ({planned:.0f} s planned)")
        began = time.monotonic()
        try:
            work()
        except PipelineError as exc:
            raise PipelineError(f"recipe stage {name}: {exc}") from None
        finally:
            release_memory()
        seconds = round(time.monotonic() - began, 1)
        self.spent_before += seconds
        self.started += seconds  # this process's seconds so far now count in spent_before
        stage.update({"status": "done", "seconds": seconds})
        logger.info("recipe: %s done in %.0f s", name, seconds)
        self.write()

    def seconds_of(self, name: str, run: RunFolder) -> float:
        """A finished stage's seconds: recorded, else its run's own record (summary.json `ran`)."""
        seconds = self.record["stages"].get(name, {}).get("seconds")
        return seconds if seconds is not None else read_mapping(run.summary).get("ran", {}).get("seconds", 0.0)

    def write(self) -> None:
        write_json_atomic(self.folder.record, self.record)


def _open_record(folder: RecipeFolder, request: RecipeRequest, files: RecipeFiles) -> dict:
    """recipe.json: a new one, or the one in OUT when it was made by the same request (a resume)."""
    asked = {**dataclasses.asdict(request), "files": dataclasses.asdict(files)}
    asked = {key: value for key, value in asked.items() if key != "output_dir"}
    asked["files"] = {key: list(value) if isinstance(value, tuple) else value for key, value in asked["files"].items()}
    # an edited config or data file is another request: its finished stages would not be what it asks
    configs = (request.post_train_config, request.fine_tune_config, request.ngram_config)
    asked["sha256"] = {path: file_digest(path) for path in (*configs, *files.texts)}
    record = read_mapping(folder.record)
    if record and not any(stage.get("status") == "done" for stage in record.get("stages", {}).values()):
        record = {}  # nothing finished yet (a plan refused, a kill during the calibration): taken over
    if record and record.get("request") != asked:
        old = record.get("request") or {}
        differing = sorted(key for key in set(old) | set(asked) if old.get(key) != asked.get(key))
        raise PipelineError(
            f"{folder.root} holds a recipe asked with other values ({', '.join(differing)}); use another "
            "--output_dir, or delete it to start again"
        )
    if not record:
        budget = request.budget_seconds
        record = {"request": asked, "budget_seconds": budget, "margin_seconds": margin_seconds(budget), "stages": {}}
    record["machine"] = this_machine()
    record["resumed"] = bool(record["stages"])
    return record


def _checked_settings(request: RecipeRequest, files: RecipeFiles) -> dict:
    """Every stage's settings parsed before any work (each config's own checks), and what the stages need equal:
    post-training and fine-tuning clean and encode the text alike; the two runs have the same folds."""
    from nikl_emotion.training.post_training import parse_post_train_config

    commands = stage_commands(request, files, {})
    post_train = parse_post_train_config(commands["post_train"][1:])
    backbone = {"model_name_or_path": post_train.model.model_name_or_path}
    backbone["offline_vocab_size"] = post_train.model.offline_vocab_size
    calibration = _parse_run(stage_commands(request, files, {"backbone": backbone})["calibration"])
    ngram, ngram_context = _parse_run(commands["ngram"]), _parse_run(commands["ngram_context"])
    if ngram.model.model_name_or_path == CONTEXT_VIEW:
        raise PipelineError(
            f"model_name_or_path: {request.ngram_config} names {CONTEXT_VIEW}, the view the recipe's second n-gram "
            "member reads; the first must read another (e.g. ngram:tfidf), or the stack gets the same view twice"
        )
    for field in dataclasses.fields(PreprocessingArguments):
        ours, theirs = getattr(post_train.data, field.name), getattr(calibration.data, field.name)
        if ours != theirs:
            raise PipelineError(
                f"{field.name}: {request.post_train_config} sets {ours!r}, {request.fine_tune_config} {theirs!r}; "
                "the backbone learns the text as post-training cleans and encodes it: make them equal"
            )
    for key, ours, theirs in (
        ("num_folds", calibration.folds.num_folds, ngram.folds.num_folds),
        ("seed", calibration.training.seed, ngram.training.seed),
    ):
        if ours != theirs:
            raise PipelineError(
                f"{key}: {request.fine_tune_config} sets {ours}, {request.ngram_config} {theirs}; the stack needs "
                "the two runs on the same folds (or give --seed)"
            )
    from nikl_emotion.backends.registry import backend_for

    refusal = "{backend} cannot be the recipe's fine-tuning: its folds' costs cannot be measured before they train"
    offered(backend_for(calibration.model.model_name_or_path), "cost_meter", refusal)
    return {"calibration": calibration, "ngram": ngram, "ngram_context": ngram_context}


def _parse_run(command: list[str]) -> RunSettings:
    from nikl_emotion.training.config_checks import parse_config

    return parse_config(command[1:])


def _parse_post_train(request: RecipeRequest, files: RecipeFiles, budgets: dict):
    from nikl_emotion.training.post_training import parse_post_train_config

    return parse_post_train_config(stage_commands(request, files, budgets)["post_train"][1:])


def _calibrate(settings: RunSettings, scratch: str, ledger: _Ledger) -> None:
    """One fold of fine-tuning measured (`CostMeter`) in a scratch folder deleted after: the fine-tuning plan, kept
    in the record once it leaves post-training its share of the budget."""
    from nikl_emotion.training.kfold import KFoldRun

    began = time.monotonic()
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        run = KFoldRun.open(settings)
        meter = run.backend.cost_meter()
        prepared = run.backend.prepare(settings, run.files.preprocessing, run.files.cleaned, run.files.cleaned_test)
        data = run.fold_data(prepared)[0]
        setup = time.monotonic() - began
        cost = meter.measure(settings, data, os.path.join(scratch, "fold_0"))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    test_rows = 0 if data.encoded_test is None else len(data.encoded_test)
    counts = FoldCounts(
        folds=settings.folds.num_folds,
        epochs=float(settings.training.num_train_epochs),
        max_steps=max(settings.training.max_steps, 0),
        choosing_rows=len(data.choosing_rows),
        predicted_rows=len(data.val_index) + test_rows,
    )
    plan = fine_tuning_plan(cost, counts, setup, ledger.budget)
    logger.info(
        "recipe: fine-tuning planned at %.0f s (every epoch: %.0f s): %.3f s per step, %d steps per fold, %.1f ms "
        "per predicted row",
        plan["seconds"],
        plan["every_epoch_seconds"],
        cost.seconds_per_step,
        plan["steps_per_fold"],
        cost.seconds_per_predicted_row * 1000,
    )
    post_training_seconds(ledger.budget, ledger.spent(), plan["seconds"])  # refused now, not after the n-gram member
    ledger.record["fine_tuning_plan"] = plan


def _stack(folder: RecipeFolder) -> None:
    from nikl_emotion.runs.stack_run import stack_files

    stack_files(folder.stacked, None, DecisionRule(), choose=True, output_dir=folder.stack)


def _scores(folder: RecipeFolder, files: RecipeFiles) -> dict:
    """The stack's and its members' OOF micro-F1 (stack.json), and the submission's on the predicted file when
    it has labels (dev.jsonl): scored once, chosen on nothing."""
    stack = read_mapping(StackFolder(folder.stack).stack)
    choice = stack.get("decision", {}).get("choice") or {}
    by_name = {candidate["name"]: candidate for candidate in choice.get("candidates", [])}
    scores = {
        "stack_nested_oof": by_name.get(choice.get("chosen"), {}).get("micro_f1"),
        "stack_rule": choice.get("chosen"),
        "oof_at_0.5": {
            os.path.relpath(name, folder.root) if os.path.isabs(name) else name: value["micro_f1"]
            for name, value in stack.get("oof_scores", {}).items()
        },
    }
    with contextlib.suppress(PipelineError):  # a file without labels (a test file) is not scored
        from nikl_emotion.decisions.metrics import score_files

        scores["predicted_file_micro_f1"] = score_files(files.predicted, StackFolder(folder.stack).submission)[
            "micro_f1"
        ]
    return scores
