"""The clock a time-budgeted training follows: the learning-rate schedule is read at the share of the training's
seconds spent instead of the share of its steps, and the training stops when they are spent. A run that slows down
takes fewer steps and still ends its schedule within its seconds; one that speeds up takes more.

Two users: post-training's `time_budget_minutes` (`BudgetClock`, sized by training/step_plan.py's plan) and a
K-fold run's `time_budget_minutes` (`FoldClock`, each fold's share of the run's minutes, its epochs a cap).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

import torch
from transformers import SchedulerType, TrainerCallback, TrainingArguments, get_scheduler
from transformers.trainer_callback import ExportableState

from nikl_emotion.base.errors import PipelineError

__all__ = [
    "SAFETY",
    "BudgetClock",
    "FoldClock",
    "ClockScheduleMixin",
    "clock_schedule",
    "check_clock_schedule",
    "slowest",
    "carried_out",
]

# the share of a time budget's minutes a program plans for (fine-tuning's folds, post-training's steps); the rest
# absorbs noise and the final save
SAFETY = 0.95
_RESOLUTION = 10_000  # the schedule's step function is read at progress x this many virtual steps
_NO_TIME = 1e-3  # the seconds a fold gets when its end has passed


class BudgetClock(TrainerCallback, ExportableState):
    """The share of a training's `training_seconds` spent, read once per optimizer step (before the optimizer, so
    the learning rate the schedule sets next and the decision to stop read the same value), and the stop when it
    reaches 1. `agree` makes every process of `accelerate launch` read the same value (the slowest's): their
    learning rates and their last step must not differ. The seconds spent travel in each checkpoint's
    trainer_state.json, so a resumed run continues the schedule where the checkpoint left it.

    With `ends_at` (a `time.monotonic()`), a run that starts afresh gets the seconds left until then, less
    `reserve_seconds` (what follows training: the final held-out evaluation), instead of `training_seconds`: what
    happened between the plan and the first step (the held-out loss before) is paid from the budget, not added."""

    def __init__(
        self, training_seconds: float, agree: Callable[[float], float] | None = None, ends_at: float | None = None
    ):
        if not training_seconds > 0:
            raise ValueError(f"training_seconds must be > 0, got {training_seconds}")
        self.training_seconds = training_seconds
        self.ends_at = ends_at
        self.reserve_seconds = 0.0
        self.progress = 0.0
        self.agree = agree or (lambda value: value)
        self._spent_before = 0.0
        self._began: float | None = None
        self._ended: float | None = None

    def schedule_resolution(self, num_training_steps: int) -> int:
        """The virtual steps the schedule is read on: fine enough for any run (its step count is only a bound)."""
        return _RESOLUTION

    def spent_seconds(self) -> float:
        """Training seconds spent: before the checkpoint this run resumed from, and in this run (until it ended)."""
        if self._began is None:
            return self._spent_before
        return self._spent_before + (self._ended or time.monotonic()) - self._began

    def state(self) -> dict:
        return {"args": {"training_seconds": self.training_seconds}, "attributes": {"spent": self.spent_seconds()}}

    def on_train_begin(self, args, state, control, **kwargs):
        self._began, self._ended = time.monotonic(), None
        saved = None
        if state.global_step > 0:  # resumed: the seconds its checkpoint spent, and the schedule it was on
            saved = state.stateful_callbacks.get(type(self).__name__) or {}
            saved = (saved[0] if isinstance(saved, list) and saved else saved) or {}
            self._spent_before = float(saved.get("attributes", {}).get("spent", 0.0))
        self._give_seconds(saved)
        self.progress = self.agree(self._share(state))

    def _give_seconds(self, saved: dict | None = None) -> None:
        """`training_seconds` at the start: a resumed run's from its checkpoint, a fresh one's until `ends_at`."""
        if saved is not None:
            self.training_seconds = float(saved.get("args", {}).get("training_seconds", self.training_seconds))
        elif self.ends_at is not None:
            self.training_seconds = max(self.ends_at - self.reserve_seconds - self._began, 1.0)

    def _share(self, state) -> float:
        """The schedule's progress: the share of the training seconds spent."""
        return self.spent_seconds() / self.training_seconds

    def on_train_end(self, args, state, control, **kwargs):
        self._ended = time.monotonic()

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.progress = self.agree(self._share(state))

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress >= 1.0:
            control.should_training_stop = True


class FoldClock(BudgetClock):
    """A fold's share of a K-fold run's `time_budget_minutes`: training and predicting end by `ends_at` (a
    `time.monotonic()`). The schedule reads whichever is further along, the seconds or the steps of
    `num_train_epochs`: a machine fast enough for every epoch trains exactly as without a budget, a slower one
    compresses the same schedule (warm-up, decay to 0) into its seconds. Early stopping still ends a fold sooner.

    What follows training is paid from the fold's seconds, measured as the fold runs: the evaluation of the last
    (partial) epoch and the prediction of its validation and test rows (`predicted_per_evaluated` times an
    evaluation's rows, at the last `eval_runtime`), and three checkpoint saves' worth (the last checkpoint, loading
    the best back, writing best/; timed from the end of an evaluation to the save after it). A resumed fold keeps
    the seconds its checkpoint spent and gets the rest until `ends_at`."""

    def __init__(self, ends_at: float, predicted_per_evaluated: float, agree: Callable[[float], float] | None = None):
        super().__init__(max(ends_at - time.monotonic(), _NO_TIME), agree=agree, ends_at=ends_at)
        self.predicted_per_evaluated = predicted_per_evaluated
        self.time_share = 0.0
        self._evaluation_seconds = self._save_seconds = 0.0
        self._evaluated_at: float | None = None

    def schedule_resolution(self, num_training_steps: int) -> int:
        """The epochs' own steps: while they are further along, the schedule is the Trainer's step schedule exactly
        (warm-up rounded as the Trainer rounds it); when the seconds lead, each step still reads its own value."""
        return max(num_training_steps, 1)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        runtime = (metrics or {}).get("eval_runtime")
        if runtime:
            self._evaluation_seconds, self._evaluated_at = float(runtime), time.monotonic()
            self._give_seconds()

    def on_save(self, args, state, control, **kwargs):
        if self._evaluated_at is not None:
            self._save_seconds, self._evaluated_at = time.monotonic() - self._evaluated_at, None
            self._give_seconds()

    def _give_seconds(self, saved: dict | None = None) -> None:
        """The seconds spent before this process began (a resumed fold's, from its checkpoint) plus what is left
        until `ends_at`, less the reserve."""
        self.reserve_seconds = self._evaluation_seconds * (1.0 + self.predicted_per_evaluated) + 3 * self._save_seconds
        given = self._spent_before + self.ends_at - self.reserve_seconds - self._began
        self.training_seconds = max(given, _NO_TIME)  # past its end: the next step is the last

    def _share(self, state) -> float:
        """The schedule's progress: the larger of the seconds' and the steps' share (the next step counted)."""
        self.time_share = self.spent_seconds() / self.training_seconds
        steps = (state.global_step + 1) / state.max_steps if state.max_steps else 0.0
        return max(self.time_share, steps)

    def ended_by(self, state) -> str:
        """What ended the fold's training: `time_budget` (its seconds), `early_stopping` or `epochs`. Read from the
        progress every process agreed on: the process whose seconds ran out first stopped them all, while this
        process's own share of seconds may still be short of 1."""
        if state.global_step < state.max_steps:
            return "time_budget" if self.progress >= 1.0 else "early_stopping"
        return "time_budget" if self.time_share >= 1.0 else "epochs"


class ClockScheduleMixin:
    """A Trainer whose learning-rate schedule follows `budget_clock` when one is set (before `train`)."""

    budget_clock: BudgetClock | None = None

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        clock = self.budget_clock
        if self.lr_scheduler is None and clock is not None:
            resolution = clock.schedule_resolution(num_training_steps)
            self.lr_scheduler = clock_schedule(self.args, optimizer or self.optimizer, clock, resolution)
            self._created_lr_scheduler = True
        return super().create_scheduler(num_training_steps, optimizer)


def slowest(accelerator, progress: float) -> float:
    """Every process's schedule progress -> the largest (the processes of `accelerate launch` step and stop
    together)."""
    return float(accelerator.gather(torch.tensor([progress], device=accelerator.device)).max())


def _at_progress(step_function: Callable[[int], float], clock: BudgetClock, resolution: int, _step: int) -> float:
    return step_function(round(min(clock.progress, 1.0) * resolution))


def clock_schedule(
    args: TrainingArguments, optimizer: torch.optim.Optimizer, clock: BudgetClock, resolution: int = _RESOLUTION
):
    """`args.lr_scheduler_type` (its warm-up and kwargs too) with `clock`'s progress in place of the step count: the
    step function over `resolution` virtual steps, read at progress x `resolution`."""
    scheduler = get_scheduler(
        args.lr_scheduler_type,
        optimizer=optimizer,
        num_warmup_steps=args.get_warmup_steps(resolution),
        num_training_steps=resolution,
        scheduler_specific_kwargs=args.lr_scheduler_kwargs,
    )
    if not isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        name = SchedulerType(args.lr_scheduler_type).value
        raise PipelineError(
            f"lr_scheduler_type: {name} is not a function of the step, so it cannot follow the clock of "
            "time_budget_minutes; use linear, cosine, polynomial, constant_with_warmup or warmup_stable_decay"
        )
    scheduler.lr_lambdas = [functools.partial(_at_progress, f, clock, resolution) for f in scheduler.lr_lambdas]
    return scheduler


def check_clock_schedule(args: TrainingArguments) -> None:
    """Refuse, before any work, a schedule that cannot follow the clock."""
    weight = torch.zeros(1, requires_grad=True)
    clock_schedule(args, torch.optim.SGD([weight], lr=1.0), BudgetClock(1.0))


def carried_out(clock: BudgetClock, state) -> dict:
    """What the budgeted run did, beside its plan: steps, epochs, seconds, the schedule's progress at the end."""
    return {
        "steps": state.global_step,
        "epochs": round(state.epoch or 0.0, 2),
        "training_seconds": round(clock.spent_seconds(), 1),
        "training_seconds_given": round(clock.training_seconds, 1),
        "schedule_progress": round(min(clock.progress, 1.0), 4),
    }
