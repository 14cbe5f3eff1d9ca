"""early_stopping_split: a share of each fold's training rows chooses the epoch, so the fold's validation rows (its
out-of-fold predictions) are unseen by every choice."""

import json

import pytest
from conftest import ROOT, SAMPLE_TRAIN, run_cli

from nikl_emotion.backends import encoder_backend
from nikl_emotion.base.errors import PipelineError
from nikl_emotion.text.data import load_jsonl
from nikl_emotion.training.config_checks import parse_config

QUICKSTART = ROOT / "configs" / "quickstart.yaml"


def test_the_epoch_is_chosen_on_training_rows_held_out_and_never_on_the_out_of_fold_rows(tmp_path, monkeypatch):
    seen = {}
    inputs = encoder_backend.fold_trainer_inputs

    def spied(train_rows, choosing_rows, tokenizer, settings):
        seen["train"], seen["choosing"] = set(train_rows["id"]), set(choosing_rows["id"])
        return inputs(train_rows, choosing_rows, tokenizer, settings)

    monkeypatch.setattr(encoder_backend, "fold_trainer_inputs", spied)
    out = tmp_path / "run"
    result = run_cli(
        "train.py",
        QUICKSTART,
        "--output_dir",
        out,
        "--num_folds",
        "2",
        "--num_train_epochs",
        "2",
        "--early_stopping_split",
        "0.2",
    )
    validation = {json.loads(line)["id"] for line in (out / "fold_1" / "val_probs.jsonl").open(encoding="utf-8")}
    everything = set(load_jsonl(SAMPLE_TRAIN)["id"])
    # fold 1 (the last trained): its epoch was chosen on rows it did not train on, and not on its validation rows
    assert not seen["choosing"] & validation and not seen["choosing"] & seen["train"]
    assert seen["train"] | seen["choosing"] == everything - validation
    assert abs(len(seen["choosing"]) / len(everything - validation) - 0.2) < 0.02  # stratified: about the share
    metrics = json.loads((out / "fold_1" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["epoch_chosen_on"] == "early_stopping_split"
    assert metrics["early_stopping_rows"] == len(seen["choosing"]) and metrics["train_rows"] == len(seen["train"])
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["oof_kind"] == "unseen" and "out-of-fold rows unseen by every choice" in result.stdout


def test_without_it_the_validation_rows_choose_and_the_run_says_so(tiny_run):
    summary = json.loads((tiny_run / "summary.json").read_text(encoding="utf-8"))
    assert summary["oof_kind"] == "chose_epoch"
    metrics = json.loads((tiny_run / "fold_0" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["epoch_chosen_on"] == "validation_rows" and metrics["early_stopping_rows"] == 0


@pytest.mark.parametrize("value", ["0.5", "-0.1", "nan"])
def test_a_share_outside_0_to_half_is_refused(value, tmp_path):
    with pytest.raises(PipelineError, match="early_stopping_split"):
        parse_config([str(QUICKSTART), "--output_dir", str(tmp_path / "o"), "--early_stopping_split", value])


def test_a_backend_that_chooses_no_epoch_refuses_it(tmp_path):
    with pytest.raises(PipelineError, match="early_stopping_split: ngram:tfidf chooses no epoch"):
        parse_config(
            [
                str(QUICKSTART),
                "--model_name_or_path",
                "ngram:tfidf",
                "--output_dir",
                str(tmp_path / "o"),
                "--early_stopping_split",
                "0.1",
            ]
        )
