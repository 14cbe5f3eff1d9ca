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

import logging
import math

from nikl_emotion.backends.budget_clock import SAFETY

__all__ = [
    "plan_steps",
    "describe",
    "describe_carried_out",
]


logger = logging.getLogger(__name__)

_STEP_ROOM = 4  # max_steps is this many times the expected steps: the clock, not the count, ends the run


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
