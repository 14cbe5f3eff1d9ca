"""A time budget for post-training that holds on any machine: the learning-rate schedule follows the clock.

Two 2-core machines differ by 2x (80 vs 150 s per MLM epoch of the offline recipe), so a fixed `num_train_epochs`
either wastes a fast machine or overruns on a slow one; and one machine changes speed while it runs (another job
starts, a laptop throttles). `time_budget_minutes` replaces the epochs:
- the training gets the seconds left of the budget (less what loading took and the final held-out evaluation);
- the schedule (warm-up, decay: any `lr_scheduler_type` built on a step function) is evaluated at the share of
  those seconds spent, not at the share of a step count, and training stops when they are spent. A run that slows
  down takes fewer steps and still ends its schedule (learning rate 0) within the budget; one that speeds up takes
  more;
- a few real steps (data loading, forward, backward, optimizer; the learning rate 0, so the weights do not move)
  give the expected step count, which is printed, recorded and bounds the run (`max_steps`, with room to spare).
The plan is kept in the output folder and the seconds spent in each checkpoint, so a resumed run continues its
schedule where its checkpoint left it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
from collections.abc import Callable

import torch
from transformers import SchedulerType, TrainerCallback, TrainingArguments, get_scheduler
from transformers.trainer_callback import ExportableState

from nikl_emotion.base.errors import PipelineError

__all__ = [
    "SAFETY",
    "measure_step_seconds",
    "plan_steps",
    "describe",
    "BudgetClock",
    "clock_schedule",
    "check_clock_schedule",
    "carried_out",
    "describe_carried_out",
]


logger = logging.getLogger(__name__)

_CALIBRATION_STEPS = 12  # measured steps, after
_CALIBRATION_WARMUP = 3  # unmeasured ones (the first batch is the longest; allocator and thread-pool warm-up)
SAFETY = 0.95  # share of the remaining time planned for; the rest absorbs noise and the final save
_STEP_ROOM = 4  # max_steps is this many times the expected steps: the clock, not the count, ends the run
_RESOLUTION = 10_000  # the schedule's step function is read at progress x this many virtual steps


def measure_step_seconds(trainer, steps: int = _CALIBRATION_STEPS, warmup: int = _CALIBRATION_WARMUP) -> float:
    """Seconds per optimizer step of `trainer`'s model on its own training batches (the slowest process's, under
    `accelerate launch`), measured as the Trainer runs one: `gradient_accumulation_steps` micro-batches, each under
    the accelerator's autocast (bf16/fp16 when set) through the model as the Trainer wraps it (DDP with several
    processes, gradients synchronised on the last micro-batch only), then the optimizer. The optimizer runs with
    learning rate 0 and no weight decay: the step costs what a real one does and changes no weight."""
    model, accelerator = trainer.model, trainer.accelerator
    model.train()
    wrapped = accelerator.prepare_model(model) if accelerator.num_processes > 1 else model
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.0, weight_decay=0.0)
    accumulation = max(1, trainer.args.gradient_accumulation_steps)
    batches = _cycled(trainer.get_train_dataloader())
    marks = []
    for step in range(warmup + steps):
        for micro in range(accumulation):
            batch = trainer._prepare_inputs(next(batches))
            sync = micro == accumulation - 1
            with contextlib.nullcontext() if sync else accelerator.no_sync(wrapped), accelerator.autocast():
                loss = wrapped(**batch).loss / accumulation
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if step >= warmup - 1:
            marks.append(time.perf_counter())
    optimizer.zero_grad(set_to_none=True)
    seconds = (marks[-1] - marks[0]) / (len(marks) - 1)
    gathered = accelerator.gather(torch.tensor([seconds], device=accelerator.device))
    return float(gathered.max())


def _cycled(loader):
    """The loader's batches over and over (a small data set has fewer batches than the measurement needs)."""
    if len(loader) == 0:
        raise ValueError("no training batches to measure a step on")
    while True:
        yield from loader


def plan_steps(
    budget_minutes: float,
    spent_seconds: float,
    step_seconds: float,
    steps_per_epoch: int,
    evaluation_seconds: float = 0.0,
) -> dict:
    """How many optimizer steps fit: the budget less what is spent, at `step_seconds` each, with one held-out
    evaluation (`evaluation_seconds`) per epoch begun. At least one step."""
    available = budget_minutes * 60 * SAFETY - spent_seconds
    training_seconds = max(available - evaluation_seconds, step_seconds)  # the final evaluation follows training
    steps = max(1, int(available / step_seconds))
    for _ in range(3):  # the evaluations depend on the epochs begun, which depend on the steps
        evaluations = math.ceil(steps / max(steps_per_epoch, 1))
        steps = max(1, int((available - evaluations * evaluation_seconds) / step_seconds))
    return {
        "time_budget_minutes": budget_minutes,
        "spent_before_training_seconds": round(spent_seconds, 1),
        "seconds_per_step": round(step_seconds, 4),
        "steps_per_epoch": steps_per_epoch,
        "evaluation_seconds": round(evaluation_seconds, 1),
        "expected_steps": steps,
        "max_steps": steps * _STEP_ROOM,
        "training_seconds": round(training_seconds, 1),
        "epochs": round(steps / max(steps_per_epoch, 1), 2),
        "planned_seconds": round(
            steps * step_seconds + math.ceil(steps / max(steps_per_epoch, 1)) * evaluation_seconds, 1
        ),
    }


def describe(plan: dict) -> str:
    return (
        f"time budget {plan['time_budget_minutes']:g} min: {plan['spent_before_training_seconds']:.0f} s spent "
        f"before training; the learning-rate schedule follows the clock over {plan['training_seconds']:.0f} s of "
        f"training (num_train_epochs is not used); {plan['seconds_per_step']:.3f} s per optimizer step measured on "
        f"this machine: ~{plan['expected_steps']} steps = {plan['epochs']:g} epochs of {plan['steps_per_epoch']} "
        "steps expected"
    )


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

    def spent_seconds(self) -> float:
        """Training seconds spent: before the checkpoint this run resumed from, and in this run (until it ended)."""
        if self._began is None:
            return self._spent_before
        return self._spent_before + (self._ended or time.monotonic()) - self._began

    def state(self) -> dict:
        return {"args": {"training_seconds": self.training_seconds}, "attributes": {"spent": self.spent_seconds()}}

    def on_train_begin(self, args, state, control, **kwargs):
        saved = state.stateful_callbacks.get(type(self).__name__) or {}
        saved = (saved[0] if isinstance(saved, list) and saved else saved) or {}
        self._began, self._ended = time.monotonic(), None
        if state.global_step > 0:  # resumed: the schedule its checkpoint was on
            self._spent_before = float(saved.get("attributes", {}).get("spent", 0.0))
            self.training_seconds = float(saved.get("args", {}).get("training_seconds", self.training_seconds))
        elif self.ends_at is not None:
            self.training_seconds = max(self.ends_at - self.reserve_seconds - self._began, 1.0)
        self.progress = self.agree(self.spent_seconds() / self.training_seconds)

    def on_train_end(self, args, state, control, **kwargs):
        self._ended = time.monotonic()

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.progress = self.agree(self.spent_seconds() / self.training_seconds)

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress >= 1.0:
            control.should_training_stop = True


def _at_progress(step_function: Callable[[int], float], clock: BudgetClock, _step: int) -> float:
    return step_function(round(min(clock.progress, 1.0) * _RESOLUTION))


def clock_schedule(args: TrainingArguments, optimizer: torch.optim.Optimizer, clock: BudgetClock):
    """`args.lr_scheduler_type` (its warm-up and kwargs too) with `clock`'s progress in place of the step count."""
    scheduler = get_scheduler(
        args.lr_scheduler_type,
        optimizer=optimizer,
        num_warmup_steps=args.get_warmup_steps(_RESOLUTION),
        num_training_steps=_RESOLUTION,
        scheduler_specific_kwargs=args.lr_scheduler_kwargs,
    )
    if not isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        name = SchedulerType(args.lr_scheduler_type).value
        raise PipelineError(
            f"lr_scheduler_type: {name} is not a function of the step, so it cannot follow the clock of "
            "time_budget_minutes; use linear, cosine, polynomial, constant_with_warmup or warmup_stable_decay"
        )
    scheduler.lr_lambdas = [functools.partial(_at_progress, f, clock) for f in scheduler.lr_lambdas]
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


def describe_carried_out(budget: dict) -> str:
    """post_train.json's `time_budget` (the plan and `carried_out`) in a line."""
    done = budget["carried_out"]
    return (
        f"the budget's schedule ran to {done['schedule_progress']:.0%} in {done['training_seconds']:.0f} s of "
        f"training ({done['training_seconds_given']:.0f} s given): {done['steps']} steps = {done['epochs']:g} epochs "
        f"(~{budget['expected_steps']} expected)"
    )
