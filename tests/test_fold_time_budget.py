"""A K-fold run's time_budget_minutes: each fold gets its share of the minutes left, and its learning-rate schedule
follows its seconds or its epochs' steps, whichever is further along; so a slow machine still ends every fold's
schedule within the budget, and a fast one trains exactly as without one."""

import json
import time

import pytest
import torch
from conftest import ROOT, run_cli
from transformers import TrainerControl, TrainerState, TrainingArguments, get_scheduler

from nikl_emotion.backends import emotion_trainer
from nikl_emotion.backends.budget_clock import SAFETY, FoldClock, clock_schedule
from nikl_emotion.base.errors import PipelineError
from nikl_emotion.training import kfold
from nikl_emotion.training.config_checks import parse_config
from nikl_emotion.training.distillation import parse_distill_config

QUICKSTART = ROOT / "configs" / "quickstart.yaml"


def at_step(step: int, max_steps: int) -> TrainerState:
    return TrainerState(global_step=step, max_steps=max_steps, stateful_callbacks=[])


def optimizer_with_lr_one() -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)


def test_with_time_to_spare_a_fold_follows_exactly_the_schedule_of_its_epochs(tmp_path):
    args = TrainingArguments(tmp_path, warmup_steps=0.1, lr_scheduler_type="linear", learning_rate=1.0)
    # 37 steps: a warm-up of 3.7 steps, rounded up to 4 as the Trainer rounds it
    clock, control, steps = FoldClock(time.monotonic() + 3600, 1.0), TrainerControl(), 37
    clocked, stepped = optimizer_with_lr_one(), optimizer_with_lr_one()
    schedule = clock_schedule(args, clocked, clock, clock.schedule_resolution(steps))  # as EmotionTrainer builds it
    # the reference: the Trainer's own step schedule over the epochs' steps
    warmup = args.get_warmup_steps(steps)
    reference = get_scheduler("linear", stepped, num_warmup_steps=warmup, num_training_steps=steps)
    clock.on_train_begin(args, at_step(0, steps), control)
    for step in range(steps):
        clock.on_pre_optimizer_step(args, at_step(step, steps), control)
        for optimizer, scheduler in ((clocked, schedule), (stepped, reference)):
            optimizer.step()
            scheduler.step()
        assert clocked.param_groups[0]["lr"] == pytest.approx(stepped.param_groups[0]["lr"], abs=1e-9), step
    clock.on_step_end(args, at_step(steps, steps), control)
    assert control.should_training_stop and clock.ended_by(at_step(steps, steps)) == "epochs"
    assert clock.time_share < 0.01


def test_short_of_time_a_fold_follows_its_seconds_and_pays_for_what_follows_training_from_them():
    clock, control = FoldClock(time.monotonic() + 1.0, predicted_per_evaluated=2.0), TrainerControl()
    clock.on_train_begin(None, at_step(0, 10_000), control)
    assert 0.95 < clock.training_seconds <= 1.0
    time.sleep(0.3)
    clock.on_pre_optimizer_step(None, at_step(1, 10_000), control)
    assert 0.28 < clock.progress < 0.4  # the seconds' share, far ahead of the steps' (0.0002)
    # an evaluation took 0.1 s: the last one and the prediction of twice its rows (0.3 s) are kept back
    clock.on_evaluate(None, at_step(1, 10_000), control, metrics={"eval_runtime": 0.1})
    assert 0.6 < clock.training_seconds <= 0.7
    clock.on_step_end(None, at_step(2, 10_000), control)
    assert not control.should_training_stop
    time.sleep(0.4)
    clock.on_pre_optimizer_step(None, at_step(2, 10_000), control)
    clock.on_step_end(None, at_step(3, 10_000), control)
    assert control.should_training_stop and clock.progress >= 1.0
    assert clock.ended_by(at_step(3, 10_000)) == "time_budget"


def test_a_fold_stopped_by_another_processs_clock_says_it_ended_by_the_time_budget():
    """Under `accelerate launch` the processes agree on the furthest progress: the one whose seconds ran out stops
    them all, and each records why, though its own seconds are not yet spent."""
    other_process_out_of_time = lambda progress: max(progress, 1.0)  # noqa: E731 (what `slowest` gathers)
    clock, control = FoldClock(time.monotonic() + 3600, 1.0, agree=other_process_out_of_time), TrainerControl()
    clock.on_train_begin(None, at_step(0, 10_000), control)
    clock.on_pre_optimizer_step(None, at_step(3, 10_000), control)
    clock.on_step_end(None, at_step(4, 10_000), control)
    assert control.should_training_stop and clock.time_share < 0.01
    assert clock.ended_by(at_step(4, 10_000)) == "time_budget"


def test_a_resumed_fold_keeps_the_seconds_its_checkpoint_spent(tmp_path):
    first, control = FoldClock(time.monotonic() + 100.0, 1.0), TrainerControl()
    first.on_train_begin(None, at_step(0, 100), control)
    time.sleep(0.2)
    TrainerState(global_step=5, max_steps=100, stateful_callbacks=[first]).save_to_json(tmp_path / "state.json")
    # the run is started again with 10 s left for this fold: 0.2 s spent of 10.2
    resumed = FoldClock(time.monotonic() + 10.0, 1.0)
    resumed.on_train_begin(None, TrainerState.load_from_json(tmp_path / "state.json"), control)
    assert 10.1 < resumed.training_seconds <= 10.25
    assert resumed.progress == pytest.approx(max(0.2 / 10.2, 6 / 100), abs=0.01)


def test_a_slowed_run_ends_every_folds_schedule_within_its_budget(tmp_path, monkeypatch):
    """A machine far slower than the epochs need (a sleep in each step): every fold ends by the clock with its
    schedule complete, and the folds end within the minutes less
    the share kept back for the summary. The summary's own seconds are fixed, not a share: 2.3 s here, beyond the
    0.9 s an 18-second budget keeps back; on NIKL they are 27 s of the 108 s a 36-minute budget keeps back."""
    training_step, summarize = emotion_trainer.EmotionTrainer.training_step, kfold.KFoldRun.summarize
    opened, summary_seconds = [], []
    open_run = kfold.KFoldRun.open.__func__

    def timed_open(cls, settings):  # the budget counts from here (after the imports and the parsing)
        opened.append(time.monotonic())
        return open_run(cls, settings)

    def slowed(self, *args, **kwargs):
        time.sleep(0.03)
        return training_step(self, *args, **kwargs)

    def timed_summary(self):
        began = time.monotonic()
        try:
            return summarize(self)
        finally:
            summary_seconds.append(time.monotonic() - began)

    monkeypatch.setattr(emotion_trainer.EmotionTrainer, "training_step", slowed)
    monkeypatch.setattr(kfold.KFoldRun, "summarize", timed_summary)
    monkeypatch.setattr(kfold.KFoldRun, "open", classmethod(timed_open))
    out, budget = tmp_path / "run", 0.3
    args = ["--output_dir", out, "--num_folds", "2", "--num_train_epochs", "200", "--early_stopping_patience", "0"]
    result = run_cli("train.py", QUICKSTART, *args, "--time_budget_minutes", str(budget))
    took = time.monotonic() - opened[0]
    # the folds end by their share (within a step's tail); all but the summary fits in the budget
    last_fold_done = (out / "fold_1" / "done.json").stat().st_mtime - (time.time() - took)
    assert last_fold_done <= budget * 60 * SAFETY + 0.5, last_fold_done
    assert took - sum(summary_seconds) <= budget * 60, (took, summary_seconds)
    records = [json.loads((out / f"fold_{k}" / "metrics.json").read_text(encoding="utf-8")) for k in (0, 1)]
    for record in records:
        clock = record["time_budget"]
        assert clock["ended_by"] == "time_budget" and clock["schedule_progress"] == 1.0, clock
        assert record["epochs_run"] < 200 and clock["training_seconds"] <= clock["training_seconds_given"] + 1.0
    assert sum(r["time_budget"]["training_seconds_given"] for r in records) < budget * 60 * SAFETY
    assert (out / "submission.jsonl").exists() and "of time_budget_minutes" in result.stderr


def test_without_a_budget_no_clock_is_recorded(tiny_run):
    assert json.loads((tiny_run / "fold_0" / "metrics.json").read_text(encoding="utf-8"))["time_budget"] is None


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--time_budget_minutes", "nan"], "time_budget_minutes: must be a number of minutes"),
        (["--time_budget_minutes", "0"], "time_budget_minutes: must be a number of minutes"),
        (["--model_name_or_path", "ngram:tfidf", "--time_budget_minutes", "5"], "no schedule to fit into minutes"),
        (["--time_budget_minutes", "5", "--lr_scheduler_type", "reduce_lr_on_plateau"], "cannot follow the clock"),
    ],
)
def test_a_budget_the_run_cannot_keep_is_refused_before_any_work(tmp_path, extra, message):
    with pytest.raises(PipelineError, match=message):
        parse_config([str(QUICKSTART), "--output_dir", str(tmp_path / "run"), *extra])
    assert not (tmp_path / "run").exists()


def test_distillation_notes_and_drops_the_fold_loops_keys_a_shared_config_sets(tiny_run, tmp_path, caplog):
    # the recipe's config sets both for train.py; one student trains num_train_epochs and chooses its own epoch
    argv = [str(QUICKSTART), "--teacher_run", str(tiny_run), "--output_dir", str(tmp_path / "student")]
    with caplog.at_level("INFO", logger="nikl_emotion.training.distillation"):
        settings = parse_distill_config([*argv, "--time_budget_minutes", "5", "--early_stopping_split", "0.1"])
    assert settings.run.budget.time_budget_minutes is None and settings.run.stopping.early_stopping_split == 0.0
    assert settings.run.resolved()["time_budget_minutes"] is None  # the student's config.yaml records what it ran
    assert "time_budget_minutes ignored" in caplog.text and "early_stopping_split ignored" in caplog.text
