"""distill.py: one student trained on a finished run's soft targets, served alone by inference.py."""

import json

import numpy as np
import pytest
from conftest import ROOT, SAMPLE_DEV, SAMPLE_TEST, SAMPLE_TRAIN, run_cli

from nikl_emotion.base.errors import PipelineError
from nikl_emotion.base.fileio import read_probs
from nikl_emotion.runs.prediction import PredictionFiles, checkpoint_loader, predict_file
from nikl_emotion.text.data import load_jsonl
from nikl_emotion.training.distillation import (
    ensemble_probabilities,
    parse_distill_config,
    run_distillation,
    soft_targets,
)

QUICKSTART = ROOT / "configs" / "quickstart.yaml"


@pytest.fixture(scope="module")
def student(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("distill") / "student"
    run_cli(
        "distill.py",
        QUICKSTART,
        "--teacher_run",
        tiny_run,
        "--output_dir",
        out,
        "--num_train_epochs",
        "3",
        "--unlabelled_files",
        SAMPLE_TEST,
    )
    return out


def test_student_holds_out_the_teachers_fold_and_learns_the_unlabelled_text(student, tiny_run):
    summary = json.loads((student / "distill.json").read_text(encoding="utf-8"))
    teacher_val, _ = read_probs(tiny_run / "fold_0" / "val_probs.jsonl")
    student_val, _ = read_probs(student / "val_probs.jsonl")
    assert sorted(student_val) == sorted(teacher_val)  # the same held-out rows, scored against gold labels
    train_rows = len(load_jsonl(SAMPLE_TRAIN))
    assert summary["rows"] == {
        "training": train_rows - len(teacher_val),
        "unlabelled": len(load_jsonl(SAMPLE_TEST, "optional")),
        "validation": len(teacher_val),
    }
    teacher_fold = json.loads((tiny_run / "fold_0" / "metrics.json").read_text(encoding="utf-8"))
    assert summary["validation_micro_f1"]["teacher_fold"] == teacher_fold["micro_f1"]
    assert 0 <= summary["validation_micro_f1"]["student"] <= 1
    assert "optimistic" in summary["validation_note"]  # the other teacher folds learned these rows' labels


def test_a_validation_file_chooses_the_epoch_and_every_training_row_trains(tiny_run, tmp_path):
    out = tmp_path / "student"
    summary = run_distillation(
        parse_distill_config(
            [
                str(QUICKSTART),
                "--teacher_run",
                str(tiny_run),
                "--output_dir",
                str(out),
                "--num_train_epochs",
                "1",
                "--validation_file",
                str(SAMPLE_DEV),
            ]
        )
    )
    dev = load_jsonl(SAMPLE_DEV)
    assert summary["rows"] == {"training": len(load_jsonl(SAMPLE_TRAIN)), "unlabelled": 0, "validation": len(dev)}
    assert summary["validation_fold"] is None and summary["validation_file"] == str(SAMPLE_DEV)
    student_ids, student_probs = read_probs(out / "val_probs.jsonl")
    assert student_ids == dev["id"]
    # the teacher's figure, computed again: both fold checkpoints predict dev, mean probability, micro-F1 at 0.5
    gold = np.asarray(dev["labels"])
    predict_file(
        [str(tiny_run / "fold_0" / "best"), str(tiny_run / "fold_1" / "best")],
        PredictionFiles(str(SAMPLE_DEV), str(tmp_path / "s.jsonl"), probs_path=str(tmp_path / "p.jsonl")),
        loader=checkpoint_loader("cpu"),
    )
    _, teacher_probs = read_probs(tmp_path / "p.jsonl")
    assert summary["validation_micro_f1"]["teacher_ensemble"] == pytest.approx(
        f1_at_half(gold, teacher_probs), abs=1e-6
    )
    assert summary["validation_micro_f1"]["student"] == pytest.approx(f1_at_half(gold, student_probs), abs=1e-6)
    assert "never trained" in summary["validation_note"]


def f1_at_half(gold: np.ndarray, probs: np.ndarray) -> float:
    """Micro-F1 with each label on at p >= 0.5, else the top label (the quickstart's decision rule), by hand."""
    decided = probs >= 0.5
    decided[np.arange(len(probs)), probs.argmax(axis=1)] |= ~decided.any(axis=1)
    true_positives = (decided & (gold == 1)).sum()
    return 2 * true_positives / (decided.sum() + (gold == 1).sum())


def test_student_serves_alone_through_inference(student, tmp_path):
    result = run_cli(
        "inference.py",
        "--checkpoint",
        student / "best",
        "--input",
        SAMPLE_TEST,
        "--output",
        tmp_path / "sub.jsonl",
        "--device",
        "cpu",
    )
    assert "wrote 100 rows" in result.stdout
    rows = [json.loads(line) for line in (tmp_path / "sub.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in rows] == load_jsonl(SAMPLE_TEST, "optional")["id"]


def test_ensemble_targets_are_the_mean_of_the_folds(tiny_run, tmp_path):
    # the teacher's own test file: its folds' saved probabilities, averaged
    ids, probs = ensemble_probabilities(str(tiny_run), str(SAMPLE_TEST))
    folds = [read_probs(tiny_run / f"fold_{k}" / "test_probs.jsonl") for k in range(2)]
    assert ids == folds[0][0]
    np.testing.assert_allclose(probs, (folds[0][1] + folds[1][1]) / 2)
    # another file: the folds' checkpoints predict it (as inference.py does with both checkpoints)
    ids, probs = ensemble_probabilities(str(tiny_run), str(SAMPLE_DEV))
    predict_file(
        [str(tiny_run / "fold_0" / "best"), str(tiny_run / "fold_1" / "best")],
        PredictionFiles(str(SAMPLE_DEV), str(tmp_path / "s.jsonl"), probs_path=str(tmp_path / "p.jsonl")),
        loader=checkpoint_loader("cpu"),
    )
    expected_ids, expected = read_probs(tmp_path / "p.jsonl")
    assert ids == expected_ids
    np.testing.assert_allclose(probs, expected, atol=1e-6)


def test_soft_targets_mix_gold_and_teacher():
    oof, gold = np.array([[0.2, 0.9]]), np.array([[0.0, 1.0]])
    np.testing.assert_allclose(soft_targets(oof, gold, 0.25), [[0.15, 0.925]], rtol=1e-6)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--unlabelled_files", str(SAMPLE_TRAIN)], "holds training rows"),
        (["--distill_gold_weight", "1.5"], "distill_gold_weight: must be in [0, 1]"),
        (["--validation_fold", "2"], "validation_fold: must be in [0, 1]"),
        (["--validation_file", str(SAMPLE_TRAIN)], "validation_file: " + str(SAMPLE_TRAIN) + " holds training rows"),
        (
            ["--validation_file", str(SAMPLE_DEV), "--validation_fold", "0"],
            "give either validation_file or validation_fold",
        ),
        (
            ["--validation_file", str(SAMPLE_DEV), "--unlabelled_files", str(SAMPLE_DEV)],
            "holds rows of the unlabelled file",
        ),
        (["--output_dir", "TEACHER"], "output_dir: must differ from teacher_run"),
    ],
)
def test_bad_distillation_requests_are_refused_before_writing(tiny_run, tmp_path, extra, message):
    extra = [str(tiny_run) if value == "TEACHER" else value for value in extra]
    with pytest.raises(PipelineError) as caught:
        run_distillation(
            parse_distill_config(
                [str(QUICKSTART), "--teacher_run", str(tiny_run), "--output_dir", str(tmp_path / "s"), *extra]
            )
        )
    assert message in str(caught.value)
    assert not (tmp_path / "s").exists()


def test_a_folder_that_is_not_a_run_is_refused_as_teacher(tmp_path):
    result = run_cli("distill.py", QUICKSTART, "--teacher_run", tmp_path, "--output_dir", tmp_path / "s", check=False)
    assert result.returncode == 1 and "is not a finished train.py run" in result.stderr
