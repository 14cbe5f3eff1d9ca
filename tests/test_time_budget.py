"""time_budget_minutes: the learning-rate schedule follows the clock, so a run that slows down still ends its
schedule within the budget."""

import json
import time

import pytest
import torch
from conftest import ROOT, run_cli
from transformers import TrainerControl, TrainerState, TrainingArguments

from nikl_emotion.backends.budget_clock import BudgetClock, check_clock_schedule, clock_schedule
from nikl_emotion.base.errors import PipelineError
from nikl_emotion.training import post_training


def learning_rates(args, progresses):
    weight = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([weight], lr=1.0)
    clock = BudgetClock(10.0)
    scheduler = clock_schedule(args, optimizer, clock)
    rates = []
    for progress in progresses:
        clock.progress = progress
        optimizer.step()
        scheduler.step()
        rates.append(optimizer.param_groups[0]["lr"])
    return rates


def test_the_schedule_is_read_at_the_share_of_the_seconds_spent(tmp_path):
    args = TrainingArguments(tmp_path, warmup_steps=0.1, lr_scheduler_type="linear", learning_rate=1.0)
    progresses = [0.05, 0.1, 0.4, 0.7, 1.0, 1.3]
    # linear warm-up over the first tenth of the time, then linear decay to 0 at the end of it
    expected = [p / 0.1 if p < 0.1 else max(0.0, (1 - p) / 0.9) for p in progresses]
    assert learning_rates(args, progresses) == pytest.approx(expected, abs=1e-3)
    cosine = TrainingArguments(tmp_path, warmup_steps=0, lr_scheduler_type="cosine", learning_rate=1.0)
    assert learning_rates(cosine, [0.5, 1.0]) == pytest.approx([0.5, 0.0], abs=1e-3)


def test_a_schedule_that_is_not_a_function_of_the_step_is_refused(tmp_path):
    with pytest.raises(PipelineError, match="reduce_lr_on_plateau"):
        check_clock_schedule(
            TrainingArguments(tmp_path, lr_scheduler_type="reduce_lr_on_plateau", eval_strategy="epoch")
        )


def test_the_clock_stops_the_run_when_its_seconds_are_spent_and_a_resumed_one_continues(tmp_path):
    clock, control = BudgetClock(0.4), TrainerControl()
    clock.on_train_begin(None, TrainerState(stateful_callbacks=[clock]), control)
    clock.on_pre_optimizer_step(None, None, control)
    clock.on_step_end(None, None, control)
    assert not control.should_training_stop and clock.progress < 0.25
    time.sleep(0.2)
    # a checkpoint keeps the seconds spent and the seconds given (trainer_state.json); a resumed run goes on from them
    TrainerState(global_step=5, stateful_callbacks=[clock]).save_to_json(tmp_path / "trainer_state.json")
    resumed = BudgetClock(60.0, ends_at=time.monotonic() + 100)
    resumed.on_train_begin(None, TrainerState.load_from_json(tmp_path / "trainer_state.json"), control)
    assert resumed.training_seconds == 0.4 and 0.5 <= resumed.progress < 0.75
    time.sleep(0.21)
    resumed.on_pre_optimizer_step(None, None, control)
    resumed.on_step_end(None, None, control)
    assert control.should_training_stop and resumed.progress >= 1.0
    resumed.on_train_end(None, None, control)
    ended = resumed.spent_seconds()
    time.sleep(0.05)
    assert resumed.spent_seconds() == ended  # what follows training is not training time


def test_a_fresh_run_gets_the_seconds_left_until_its_end_less_the_final_evaluation():
    clock = BudgetClock(100.0, ends_at=time.monotonic() + 10.0)
    clock.reserve_seconds = 2.0
    clock.on_train_begin(None, TrainerState(stateful_callbacks=[clock]), TrainerControl())
    assert 7.5 < clock.training_seconds <= 8.0


def test_a_run_slowed_after_its_measurement_still_ends_its_schedule_within_the_budget(tmp_path, monkeypatch):
    """The issue's case: the machine gets busy after the few measured steps. A plan fixed in steps overran
    (171.8 s of a 120-s budget); the clock's schedule ends in time, with fewer steps than expected."""
    training_step = post_training._PostTrainer.training_step

    def slowed(self, *args, **kwargs):  # the measured steps do not go through training_step; the run's do
        time.sleep(0.15)
        return training_step(self, *args, **kwargs)

    monkeypatch.setattr(post_training._PostTrainer, "training_step", slowed)
    out, budget = tmp_path / "post", 0.3
    started = time.monotonic()
    result = run_cli(
        "post_train.py",
        ROOT / "configs" / "post_train-quickstart.yaml",
        "--output_dir",
        out,
        "--time_budget_minutes",
        str(budget),
    )
    took = time.monotonic() - started
    summary = json.loads((out / "post_train.json").read_text(encoding="utf-8"))
    plan, done = summary["time_budget"], summary["time_budget"]["carried_out"]
    assert took <= budget * 60 and summary["seconds"] <= budget * 60, (took, summary)
    assert done["schedule_progress"] == 1.0 and summary["steps"] == done["steps"]
    assert done["steps"] < plan["expected_steps"] / 2  # each step took several times what was measured
    assert done["training_seconds"] == pytest.approx(done["training_seconds_given"], abs=1.0)
    assert done["training_seconds_given"] <= plan["training_seconds"]
    assert "the budget's schedule ran to 100%" in result.stderr
