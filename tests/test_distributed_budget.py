"""Time budgets under `accelerate launch` with 2 CPU processes (gloo): every rank follows one clock, the slowest's,
and stops at the same step. A file of its own so the suite's two workers share the launches (`--dist loadfile`)."""

import json
import shutil
import subprocess

import pytest
from conftest import ROOT
from test_distributed import ONE_THREAD_EACH, QUICKSTART, TWO_CPU_PROCESSES


@pytest.mark.skipif(shutil.which("accelerate") is None, reason="accelerate CLI not on PATH")
def test_the_time_budget_measures_the_wrapped_model_with_accumulation_and_holds(tmp_path):
    out = tmp_path / "post"
    result = subprocess.run(
        [
            *TWO_CPU_PROCESSES,
            "post_train.py",
            str(ROOT / "configs" / "post_train-quickstart.yaml"),
            "--output_dir",
            str(out),
            "--time_budget_minutes",
            "0.3",
            "--gradient_accumulation_steps",
            "2",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=ONE_THREAD_EACH,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "post_train.json").read_text(encoding="utf-8"))
    plan = summary["time_budget"]
    # both ranks followed one clock (the slowest's) to the end of the schedule and stopped at the same step (or
    # DDP would hang); the time bound is loose (the other test worker shares the cores)
    assert plan["carried_out"]["schedule_progress"] == 1.0 and summary["steps"] == plan["carried_out"]["steps"]
    assert summary["seconds"] <= 0.3 * 60 * 2


@pytest.mark.skipif(shutil.which("accelerate") is None, reason="accelerate CLI not on PATH")
def test_a_k_fold_time_budget_stops_both_ranks_at_one_step_each_fold(tmp_path):
    """Each fold's clock is agreed across the ranks (the slowest's): both stop at the same step by the clock, or DDP
    would hang; the epochs (200) are far more than the minutes allow."""
    out = tmp_path / "ddp-budget"
    result = subprocess.run(
        [
            *TWO_CPU_PROCESSES,
            "train.py",
            str(QUICKSTART),
            *["--output_dir", str(out), "--num_folds", "2", "--num_train_epochs", "200"],
            *["--early_stopping_patience", "0", "--time_budget_minutes", "0.3"],
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=ONE_THREAD_EACH,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for k in range(2):
        metrics = json.loads((out / f"fold_{k}" / "metrics.json").read_text(encoding="utf-8"))
        assert metrics["processes"] == 2
        clock = metrics["time_budget"]
        assert clock["ended_by"] == "time_budget" and clock["schedule_progress"] == 1.0, clock
        assert metrics["epochs_run"] < 200
    assert (out / "submission.jsonl").exists()
