"""Post-training's step plan: the steps of its time budget that fit, measured on this machine (the clock the schedule
then follows is backends/budget_clock.py's `BudgetClock`).

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
import logging
import math
import time

import torch

from nikl_emotion.backends.budget_clock import SAFETY

__all__ = [
    "measure_step_seconds",
    "plan_steps",
    "describe",
    "describe_carried_out",
]


logger = logging.getLogger(__name__)

_CALIBRATION_STEPS = 12  # measured steps, after
_CALIBRATION_WARMUP = 3  # unmeasured ones (the first batch is the longest; allocator and thread-pool warm-up)
_STEP_ROOM = 4  # max_steps is this many times the expected steps: the clock, not the count, ends the run


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


def describe_carried_out(budget: dict) -> str:
    """post_train.json's `time_budget` (the plan and `carried_out`) in a line."""
    done = budget["carried_out"]
    return (
        f"the budget's schedule ran to {done['schedule_progress']:.0%} in {done['training_seconds']:.0f} s of "
        f"training ({done['training_seconds_given']:.0f} s given): {done['steps']} steps = {done['epochs']:g} epochs "
        f"(~{budget['expected_steps']} expected)"
    )
