"""A killed training run resumes where it stopped; a changed configuration is refused in an existing run."""

import json
import os
import signal
import subprocess
import sys
import time

from conftest import ROOT, SAMPLE_TRAIN, run_cli

from nikl_emotion.base.fileio import read_probs
from nikl_emotion.text.data import load_jsonl

ARGS = ["--num_folds", "2", "--num_train_epochs", "8", "--early_stopping_patience", "0"]


def train_command(out):
    return [sys.executable, "train.py", str(ROOT / "configs" / "quickstart.yaml"), "--output_dir", str(out), *ARGS]


def test_sigkill_mid_fold_then_resume_matches_an_uninterrupted_run(tmp_path, tiny_run):
    out = tmp_path / "killed"
    process = subprocess.Popen(train_command(out), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = out / "fold_0" / "checkpoints"
    deadline = time.time() + 300
    try:
        while time.time() < deadline:
            done = list(checkpoints.glob("checkpoint-*/trainer_state.json")) if checkpoints.exists() else []
            if done or process.poll() is not None:
                break
            time.sleep(0.05)
        assert process.poll() is None, "the run ended before it could be killed"
        assert done, "no checkpoint appeared"
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    assert not (out / "fold_0" / "done.json").exists() and not (out / "summary.json").exists()

    resumed = run_cli(*train_command(out)[1:])
    assert "fold 0: resuming from checkpoint-" in resumed.stderr
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    uninterrupted = json.loads((tiny_run / "summary.json").read_text(encoding="utf-8"))
    assert [f["fold"] for f in summary["folds"]] == [f["fold"] for f in uninterrupted["folds"]] == [0, 1]
    ids, _ = read_probs(out / "oof.jsonl")
    assert ids == read_probs(tiny_run / "oof.jsonl")[0] == load_jsonl(SAMPLE_TRAIN)["id"]
    assert all(f["epochs_run"] == 8 for f in summary["folds"])
    assert not (out / "fold_0" / "checkpoints").exists()

    # run again: both folds are complete and skipped, nothing is retrained
    again = run_cli(*train_command(out)[1:])
    assert "fold 0: already complete" in again.stderr and "fold 1: already complete" in again.stderr


def test_changed_config_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "run"
    run_cli(
        "train.py",
        ROOT / "configs" / "quickstart.yaml",
        "--output_dir",
        out,
        "--num_folds",
        "2",
        "--fold",
        "0",
        "--num_train_epochs",
        "1",
    )
    before = os.listdir(out / "fold_0")
    refused = run_cli(
        "train.py",
        ROOT / "configs" / "quickstart.yaml",
        "--output_dir",
        out,
        "--num_folds",
        "2",
        "--fold",
        "0",
        "--num_train_epochs",
        "1",
        "--learning_rate",
        "0.01",
        check=False,
    )
    assert refused.returncode == 1
    assert "learning_rate: 0.001 -> 0.01" in refused.stderr and "--overwrite true" in refused.stderr
    assert os.listdir(out / "fold_0") == before
    # another fold of the same run is not a change
    run_cli(
        "train.py",
        ROOT / "configs" / "quickstart.yaml",
        "--output_dir",
        out,
        "--num_folds",
        "2",
        "--fold",
        "1",
        "--num_train_epochs",
        "1",
    )
    assert (out / "summary.json").exists()
    run_cli(
        "train.py",
        ROOT / "configs" / "quickstart.yaml",
        "--output_dir",
        out,
        "--num_folds",
        "2",
        "--fold",
        "0",
        "--num_train_epochs",
        "1",
        "--learning_rate",
        "0.01",
        "--overwrite",
        "true",
    )
    assert not (out / "fold_1").exists() and not (out / "summary.json").exists()
