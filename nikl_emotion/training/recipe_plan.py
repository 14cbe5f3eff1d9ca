"""The recipe's plan of its minutes: what fine-tuning, the n-gram members and the stack will cost on this machine, and
post-training given the rest less a stated margin (`recipe.py`; the stages run on their own clocks as their commands
do).

- The n-gram members run first: their cost is their seconds, measured, not planned.
- Fine-tuning's cost is counted from one fold's parts measured on this machine (its backend's `CostMeter`: an
  optimizer step, a predicted row, a checkpoint save, the fold's model built) times the fold's counts (its epochs'
  steps, the choosing rows evaluated each epoch, the validation and test rows predicted at its end), plus the run's
  set-up as the calibration paid it. Fine-tuning is planned at the price of `EPOCHS_SHARE` of the config's schedule
  (~3.9 of 6 epochs), or at `FINE_TUNE_SHARE` of the budget where that costs more: its folds' schedules run
  compressed onto their seconds (`time_budget_minutes`), so their clocks end them, as early stopping would not
  (it ends a fold whenever its held-out rows stop improving, leaving its seconds unspent after post-training, the
  stage that could have used them). The split adopted on OOF before: 36 of 60 minutes, ~3.9 of 6 epochs, as good
  as early stopping's 4-6 (BENCHMARKS.md issue 36). A faster machine gives post-training everything else.
- The stack's cost is a share of the first n-gram member's (`STACK_PER_NGRAM`): both fit per-label logistic
  regressions on the same out-of-fold rows and choose a decision rule on them (a third run adds two inputs to each
  label's regression, not rows).
- Post-training gets the rest, less `margin_seconds` (what a plan cannot see: Python's start, a stage's last save).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from nikl_emotion.backends.budget_clock import SAFETY
from nikl_emotion.backends.fold_backend import FoldCost
from nikl_emotion.base.errors import PipelineError

__all__ = [
    "MARGIN_SHARE",
    "STACK_PER_NGRAM",
    "MIN_POST_TRAIN_SHARE",
    "FINE_TUNE_SHARE",
    "EPOCHS_SHARE",
    "FoldCounts",
    "margin_seconds",
    "fine_tuning_plan",
    "stack_seconds",
    "post_training_seconds",
    "format_plan_table",
]

MARGIN_SHARE = 0.02  # of the budget, planned for nothing
_MIN_MARGIN_SECONDS = 5.0
# the stack's seconds per second of the n-gram member: 0.18-0.31 on NIKL (the stack 20-37 s, the member 110-238 s,
# BENCHMARKS.md issue 36), rounded up: a stack that ends early leaves seconds unused, one that ends late overruns
STACK_PER_NGRAM = 0.35
# post-training's least share of the budget: below it the minutes cannot hold this recipe on this machine
MIN_POST_TRAIN_SHARE = 0.1
# fine-tuning's largest share of the budget (its folds compressed onto it when EPOCHS_SHARE costs more)
FINE_TUNE_SHARE = 0.6
# the share of the fine-tuning config's schedule priced: 6 epochs compressed onto ~3.9 did as well on OOF as early
# stopping's 4-6 (BENCHMARKS.md, issue 36), and then the folds' clocks end them, not early stopping, which left a
# fine-tuning priced at every epoch 455 of its 3,318 s unspent at 90 minutes (issue 50)
EPOCHS_SHARE = 0.65


@dataclass(frozen=True)
class FoldCounts:
    """What one fold of the fine-tuning run does, counted from its settings and rows."""

    folds: int
    epochs: float  # num_train_epochs
    max_steps: int  # > 0: the steps that replace the epochs
    choosing_rows: int  # evaluated after every epoch
    predicted_rows: int  # the fold's validation and test rows, predicted once at its end


def margin_seconds(budget_seconds: float) -> float:
    return max(MARGIN_SHARE * budget_seconds, _MIN_MARGIN_SECONDS)


def _fold_price(cost: FoldCost, counts: FoldCounts, epochs: float) -> dict:
    """One fold's seconds over `epochs` of its schedule (or max_steps): built, trained, evaluated after each epoch
    begun, its checkpoints saved (one per epoch, then best/ and its reload) and its rows predicted."""
    steps = counts.max_steps or math.ceil(round(epochs * cost.steps_per_epoch, 6))  # 0.65 * 6 * 30: 117.00000000000001
    epochs_begun = math.ceil(steps / cost.steps_per_epoch)
    parts = {
        "training": steps * cost.seconds_per_step,
        "evaluating_and_predicting": (epochs_begun * counts.choosing_rows + counts.predicted_rows)
        * cost.seconds_per_predicted_row,
        "saving": (epochs_begun + 2) * cost.seconds_per_save,
        "building": cost.seconds_to_build,
    }
    return {"steps": steps, "seconds": sum(parts.values()), "parts": parts}


def fine_tuning_plan(cost: FoldCost, counts: FoldCounts, setup_seconds: float, budget_seconds: float) -> dict:
    """The fine-tuning run's seconds: its set-up, then each fold over every epoch (`_fold_price`), as the run's
    `time_budget_minutes` in seconds (the folds end by SAFETY of them, the summary after): `every_epoch_seconds`;
    `seconds`, the plan: the price of EPOCHS_SHARE of the schedule, or FINE_TUNE_SHARE of `budget_seconds` when
    that is less (max_steps: the steps asked, uncompressed)."""
    every = _fold_price(cost, counts, counts.epochs)
    compressed = _fold_price(cost, counts, EPOCHS_SHARE * counts.epochs)
    every_seconds = (setup_seconds + counts.folds * every["seconds"]) / SAFETY
    compressed_seconds = (setup_seconds + counts.folds * compressed["seconds"]) / SAFETY
    return {
        "measured": asdict(cost),
        "counts": asdict(counts),
        "setup_seconds": round(setup_seconds, 1),
        "steps_per_fold": every["steps"],
        "fold_seconds": round(every["seconds"], 1),
        "fold_parts_seconds": {name: round(value, 1) for name, value in every["parts"].items()},
        "every_epoch_seconds": round(every_seconds, 1),
        "compressed_seconds": round(compressed_seconds, 1),
        "seconds": round(min(compressed_seconds, FINE_TUNE_SHARE * budget_seconds), 1),
    }


def stack_seconds(ngram_seconds: float) -> float:
    return round(STACK_PER_NGRAM * ngram_seconds, 1)


def post_training_seconds(budget_seconds: float, spent_seconds: float, later_seconds: float) -> float:
    """The seconds post-training gets: the budget less what is spent, what the later stages are planned to cost
    and the margin; refused when that leaves it less than MIN_POST_TRAIN_SHARE of the budget."""
    given = budget_seconds - spent_seconds - later_seconds - margin_seconds(budget_seconds)
    if given < MIN_POST_TRAIN_SHARE * budget_seconds:
        raise PipelineError(
            f"--minutes {budget_seconds / 60:g}: on this machine the stages after post-training are planned at "
            f"{later_seconds:.0f} s and {spent_seconds:.0f} s are spent, which leaves post-training {given:.0f} s, "
            f"less than {MIN_POST_TRAIN_SHARE:.0%} of the budget: give more minutes, or a fine-tuning config with "
            "fewer folds or epochs"
        )
    return round(given, 1)


def format_plan_table(record: dict) -> str:
    """recipe.json as a table: each stage's planned and spent seconds and how it was planned, what the command
    spent besides (its start, checks, records), and the total against the budget."""
    stages, budget = record["stages"], record["budget_seconds"]
    lines = [f"{'stage':<14} {'planned s':>10} {'spent s':>9}  how planned", "-" * 72]
    for name, stage in stages.items():
        planned, spent = stage.get("planned_seconds"), stage.get("seconds")
        shown_planned = "-" if planned is None else f"{planned:.0f}"
        shown_spent = "-" if spent is None else f"{spent:.0f}"
        lines.append(f"{name:<14} {shown_planned:>10} {shown_spent:>9}  {stage.get('how', '')}")
    total = record.get("spent_seconds")
    if total is not None:
        other = total - sum(stage.get("seconds") or 0.0 for stage in stages.values())
        lines.append(f"{'other':<14} {'-':>10} {other:>9.0f}  Python's start, the checks, the records")
    lines.append(f"{'margin':<14} {record['margin_seconds']:>10.0f} {'-':>9}  planned for nothing")
    lines.append("-" * 72)
    if total is not None:
        lines.append(f"{'total':<14} {budget:>10.0f} {total:>9.0f}  {total / budget:.1%} of the budget")
    return "\n".join(lines)
