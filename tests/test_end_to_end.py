"""train -> inference -> ensemble -> score on the tiny offline model, through the command-line entry points."""

import json

import numpy as np
import yaml
from conftest import LABELS, ROOT, SAMPLE_DEV, SAMPLE_TEST, SAMPLE_TRAIN, run_cli

from nikl_emotion.base.fileio import read_probs
from nikl_emotion.decisions.metrics import score
from nikl_emotion.text.data import load_jsonl


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_training_run_writes_every_promised_file(tiny_run):
    config = yaml.safe_load((tiny_run / "config.yaml").read_text(encoding="utf-8"))
    assert config["num_folds"] == 2 and config["model_name_or_path"] == "offline:electra-tiny"
    summary = json.loads((tiny_run / "summary.json").read_text(encoding="utf-8"))
    assert [f["fold"] for f in summary["folds"]] == [0, 1]
    assert set(summary["oof"]) >= {"micro_f1", "macro_f1", "per_label"}
    assert summary["config"]["num_folds"] == 2
    train_ids = load_jsonl(SAMPLE_TRAIN)["id"]
    oof_ids, oof = read_probs(tiny_run / "oof.jsonl")
    assert oof_ids == train_ids and oof.shape == (len(train_ids), 8)
    for k in range(2):
        best = tiny_run / f"fold_{k}" / "best"
        assert (
            (best / "config.json").exists()
            and (best / "tokenizer.json").exists()
            and (best / "preprocessing.json").exists()
        )
        assert not (tiny_run / f"fold_{k}" / "checkpoints").exists()  # pruned: only best/ is kept
    submission = read_jsonl(tiny_run / "submission.jsonl")
    test_rows = read_jsonl(SAMPLE_TEST)
    assert [r["id"] for r in submission] == [r["id"] for r in test_rows]
    assert [r["input"] for r in submission] == [r["input"] for r in test_rows]
    assert all(list(r["output"]) == LABELS and set(r["output"].values()) <= {"True", "False"} for r in submission)
    assert all("True" in r["output"].values() for r in submission)  # empty-prediction fallback


def test_oof_scores_are_the_scores_of_the_oof_file(tiny_run):
    summary = json.loads((tiny_run / "summary.json").read_text(encoding="utf-8"))
    _, oof = read_probs(tiny_run / "oof.jsonl")
    from nikl_emotion.decisions.metrics import decide

    gold = np.asarray(load_jsonl(SAMPLE_TRAIN)["labels"])
    assert abs(score(gold, decide(oof))["micro_f1"] - summary["oof"]["micro_f1"]) < 1e-4


def test_inference_ensemble_and_score(tiny_run, tmp_path):
    checkpoints = [tiny_run / "fold_0" / "best", tiny_run / "fold_1" / "best"]
    dev_sub, dev_probs = tmp_path / "dev_sub.jsonl", tmp_path / "dev_probs.jsonl"
    run_cli(
        "inference.py", "--checkpoint", *checkpoints, "--input", SAMPLE_DEV, "--output", dev_sub, "--probs", dev_probs
    )
    result = run_cli("score.py", SAMPLE_DEV, dev_sub, "--json")
    dev_f1 = json.loads(result.stdout.strip().splitlines()[-1])["micro_f1"]
    # learning happened: far above always predicting the most frequent label
    gold = np.asarray(load_jsonl(SAMPLE_DEV)["labels"])
    majority = np.zeros_like(gold)
    majority[:, gold.sum(axis=0).argmax()] = 1
    assert dev_f1 > score(gold, majority)["micro_f1"] + 0.3

    # per-fold inference, then ensemble.py, equals train.py's own vote of the same folds on the test file
    fold_probs = []
    for k, checkpoint in enumerate(checkpoints):
        fold_probs.append(tmp_path / f"test_probs_{k}.jsonl")
        run_cli(
            "inference.py",
            "--checkpoint",
            checkpoint,
            "--input",
            SAMPLE_TEST,
            "--output",
            tmp_path / f"t{k}.jsonl",
            "--probs",
            fold_probs[-1],
        )
        ids, probs = read_probs(fold_probs[-1])
        _, from_training = read_probs(tiny_run / f"fold_{k}" / "test_probs.jsonl")
        np.testing.assert_allclose(probs, from_training, atol=1e-5)
    voted = tmp_path / "voted.jsonl"
    run_cli(
        "ensemble.py",
        "--inputs",
        *fold_probs,
        "--reference",
        SAMPLE_TEST,
        "--output",
        voted,
        "--decision",
        tiny_run / "decision.json",
    )
    assert voted.read_bytes() == (tiny_run / "submission.jsonl").read_bytes()


def test_single_fold_with_marker_format(tmp_path):
    """`--fold` runs one fold and waits for the others before summarising; marker tokens reach inference."""
    out = tmp_path / "out"
    result = run_cli(
        "train.py",
        ROOT / "configs" / "quickstart.yaml",
        "--output_dir",
        out,
        "--num_folds",
        "3",
        "--fold",
        "1",
        "--num_train_epochs",
        "2",
        "--input_format",
        "marker",
    )
    assert "summarised when all 3 folds" in result.stderr
    assert (out / "fold_1" / "best").exists() and not (out / "fold_0").exists() and not (out / "summary.json").exists()
    pre = json.loads((out / "fold_1" / "best" / "preprocessing.json").read_text(encoding="utf-8"))
    assert pre["input_format"] == "marker" and pre["labels"] == LABELS
    run_cli(
        "inference.py",
        "--checkpoint",
        out / "fold_1" / "best",
        "--input",
        SAMPLE_TEST,
        "--output",
        tmp_path / "s.jsonl",
    )
    assert len(read_jsonl(tmp_path / "s.jsonl")) == len(read_jsonl(SAMPLE_TEST))


def test_thresholds_and_report_are_written(tiny_run, tmp_path):
    from PIL import Image

    from nikl_emotion.decisions.thresholds import load_thresholds
    from nikl_emotion.runs.report import PLOTS

    summary = json.loads((tiny_run / "summary.json").read_text(encoding="utf-8"))
    gain = summary["thresholds"]
    assert 0 <= gain["micro_f1_at_default"] <= 1 and 0 <= gain["micro_f1_tuned_nested"] <= 1
    assert abs(gain["micro_f1_at_default"] - summary["oof"]["micro_f1"]) < 1e-9
    thresholds = load_thresholds(str(tiny_run / "thresholds.json"))
    assert thresholds.shape == (8,)
    report = (tiny_run / "report.md").read_text(encoding="utf-8")
    for name in PLOTS:
        assert f"]({name})" in report
        with Image.open(tiny_run / name) as image:
            assert image.format == "PNG" and image.size[0] > 300
            image.verify()
    assert "fold 0" in report and "fold 1" in report and "Thresholds" in report

    # inference with the fitted thresholds
    out = tmp_path / "dev.jsonl"
    run_cli(
        "inference.py",
        "--checkpoint",
        tiny_run / "fold_0" / "best",
        "--input",
        SAMPLE_DEV,
        "--output",
        out,
        "--thresholds",
        tiny_run / "thresholds.json",
    )
    assert len(read_jsonl(out)) == len(read_jsonl(SAMPLE_DEV))


def test_report_command_rebuilds_a_finished_run(tiny_run, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy)
    for name in ("report.md", "thresholds.json", "summary.json", "submission.jsonl", "oof.jsonl"):
        (copy / name).unlink()
    result = run_cli("report.py", copy)
    assert "wrote" in result.stdout
    assert (copy / "report.md").exists() and (copy / "thresholds.json").exists()
    assert (copy / "submission.jsonl").read_bytes() == (tiny_run / "submission.jsonl").read_bytes()
    assert (
        json.loads((copy / "summary.json").read_text())["oof"]
        == json.loads((tiny_run / "summary.json").read_text())["oof"]
    )


def test_inference_refuses_a_checkpoint_with_other_labels(tiny_run, tmp_path):
    import shutil

    checkpoint = tmp_path / "best"
    shutil.copytree(tiny_run / "fold_0" / "best", checkpoint)
    config = json.loads((checkpoint / "config.json").read_text())
    config["id2label"] = {str(i): label for i, label in enumerate(reversed(LABELS))}
    config["label2id"] = {label: i for i, label in enumerate(reversed(LABELS))}
    (checkpoint / "config.json").write_text(json.dumps(config))
    out = tmp_path / "s.jsonl"
    result = run_cli("inference.py", "--checkpoint", checkpoint, "--input", SAMPLE_TEST, "--output", out, check=False)
    assert result.returncode == 1 and "labels" in result.stderr.splitlines()[-1] and "differ" in result.stderr
    assert not out.exists()
    assert not (tiny_run / "fold_0" / "best.partial").exists()
